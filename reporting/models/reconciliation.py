from django.conf import settings
from django.db import models


class ReconciliationRun(models.Model):
    """One comparison of synced orders with the ERP's invoices over a window.

    ``cursor`` is the id of the last command whose outcome is stored: the
    items of a batch and the cursor commit together, so a run that crashed
    resumes after its last committed batch and never checks an order twice.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    window_start = models.DateTimeField(help_text="Commands finished at or after this.")
    window_end = models.DateTimeField(help_text="Commands finished before this.")
    destination = models.ForeignKey(
        "syncflows.Destination",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text="Only this destination; empty means every destination.",
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0, help_text="Orders in the window.")
    processed = models.PositiveIntegerField(default=0)
    cursor = models.BigIntegerField(default=0)
    orphans_checked = models.BooleanField(default=False)
    matched = models.PositiveIntegerField(default=0)
    mismatched = models.PositiveIntegerField(default=0)
    missing = models.PositiveIntegerField(default=0)
    orphaned = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"reconciliation run {self.pk} ({self.state})"

    @property
    def percent_done(self) -> int:
        if self.state == self.State.DONE:
            return 100
        if not self.total:
            return 0
        return min(99, self.processed * 100 // self.total)


class ReconciliationItem(models.Model):
    """The outcome of one order (or one ERP-only document) in a run."""

    class Outcome(models.TextChoices):
        MATCHED = "matched", "Matched"
        MISMATCHED = "mismatched", "Amount or currency differs"
        MISSING = "missing", "Invoice missing"
        ORPHAN = "orphan", "ERP document without a CRM deal"

    run = models.ForeignKey(
        ReconciliationRun, on_delete=models.CASCADE, related_name="items"
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    command = models.ForeignKey(
        "syncflows.Command", null=True, blank=True, on_delete=models.PROTECT
    )
    destination = models.ForeignKey("syncflows.Destination", on_delete=models.PROTECT)
    record_key = models.CharField(max_length=300, blank=True)
    crm_amount = models.DecimalField(max_digits=18, decimal_places=3, null=True)
    crm_currency = models.CharField(max_length=3, blank=True)
    erp_amount = models.DecimalField(max_digits=18, decimal_places=3, null=True)
    erp_currency = models.CharField(max_length=3, blank=True)
    erp_reference = models.CharField(max_length=200, blank=True)
    document_number = models.CharField(max_length=200, blank=True)
    invoice_number = models.CharField(max_length=200, blank=True)
    message = models.TextField(blank=True)
    case_id = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # A resumed run must not store an order twice.
            models.UniqueConstraint(
                fields=["run", "command"],
                condition=models.Q(command__isnull=False),
                name="reconciliation_item_once",
            ),
            models.UniqueConstraint(
                fields=["run", "destination", "erp_reference"],
                condition=models.Q(outcome="orphan"),
                name="reconciliation_orphan_once",
            ),
        ]
        indexes = [models.Index(fields=["run", "outcome", "id"])]

    def __str__(self):
        return f"{self.get_outcome_display()}: {self.record_key}"

    @property
    def crm_text(self) -> str:
        return _amount_text(self.crm_amount, self.crm_currency)

    @property
    def erp_text(self) -> str:
        return _amount_text(self.erp_amount, self.erp_currency)


def _amount_text(amount, currency: str) -> str:
    """Show an amount at its currency's minor unit, e.g. "12.50 EUR"."""
    from meshline import money

    if amount is None:
        return "–"
    try:
        return f"{money.quantize(amount, currency)} {currency}"
    except money.MoneyError:
        return f"{amount} {currency}".strip()


class ErpInvoiceSnapshot(models.Model):
    """The invoice data that reconciliation last read for one synced order.

    The KPIs for days to cash and invoice accuracy read this table, so that
    they stay SQL aggregates instead of ERP calls.
    """

    command = models.OneToOneField(
        "syncflows.Command", on_delete=models.CASCADE, related_name="invoice_snapshot"
    )
    destination = models.ForeignKey("syncflows.Destination", on_delete=models.PROTECT)
    brief = models.ForeignKey("syncflows.Brief", on_delete=models.PROTECT)
    business_unit = models.CharField(max_length=64, blank=True)
    synced_at = models.DateTimeField(help_text="When the command succeeded.")
    crm_close_date = models.DateField(null=True, blank=True)
    crm_amount = models.DecimalField(max_digits=18, decimal_places=3, null=True)
    crm_currency = models.CharField(max_length=3, blank=True)
    invoice_reference = models.CharField(max_length=200, blank=True)
    invoice_number = models.CharField(max_length=200, blank=True)
    invoice_state = models.CharField(max_length=16, blank=True)
    invoice_currency = models.CharField(max_length=3, blank=True)
    invoice_total = models.DecimalField(max_digits=18, decimal_places=3, null=True)
    credited_total = models.DecimalField(max_digits=18, decimal_places=3, default=0)
    paid_on = models.DateField(null=True, blank=True)
    fetched_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["synced_at"]),
            models.Index(fields=["paid_on"]),
        ]

    def __str__(self):
        return f"invoice {self.invoice_number or '?'} of command {self.command_id}"
