"""The KPI summary: per-run facts and their sums per time slot.

``reporting.services.summary`` keeps these tables in step with the ledger
and the invoice snapshots, and the dashboard reads the sums instead of
aggregating the sync runs, commands and snapshots themselves. Facts store
plain ids, not foreign keys, because they are copies that a rebuild can
recreate. The sums keep foreign keys, because the dashboard joins them to
read the current business unit of a connector and the slug of a destination.
"""

from django.db import models


class SyncFact(models.Model):
    """One sync run as the success and exception rates count it.

    Only counted runs (queued, or failed before dispatch) have a row.
    """

    run_id = models.BigIntegerField(primary_key=True)
    created_at = models.DateTimeField()
    slot = models.DateTimeField(help_text="Start of the UTC slot of created_at.")
    brief_id = models.BigIntegerField()
    connector_id = models.BigIntegerField()
    business_unit = models.CharField(
        max_length=64, blank=True, help_text="The record's own business unit."
    )
    destination_id = models.BigIntegerField(null=True)
    clean = models.BooleanField(help_text="Succeeded without human intervention.")
    excepted = models.BooleanField(help_text="Opened at least one exception case.")

    def __str__(self):
        return f"sync fact of run {self.run_id}"


class CommandFact(models.Model):
    """One live command as expected revenue counts it.

    Only live commands that are neither superseded nor compensated have a row.
    """

    command_id = models.BigIntegerField(primary_key=True)
    created_at = models.DateTimeField()
    slot = models.DateTimeField(help_text="Start of the UTC slot of created_at.")
    brief_id = models.BigIntegerField()
    connector_id = models.BigIntegerField()
    business_unit = models.CharField(max_length=64, blank=True)
    destination_id = models.BigIntegerField()
    # Text, because the payload's currency is whatever the mapping produced.
    currency = models.TextField(blank=True)
    amount = models.DecimalField(max_digits=20, decimal_places=3, null=True)

    def __str__(self):
        return f"revenue fact of command {self.command_id}"


class SyncSummary(models.Model):
    """The sync facts of one slot and segment, summed."""

    slot = models.DateTimeField()
    brief = models.ForeignKey("syncflows.Brief", on_delete=models.CASCADE)
    connector = models.ForeignKey("syncflows.Connector", on_delete=models.CASCADE)
    business_unit = models.CharField(max_length=64, blank=True)
    destination = models.ForeignKey(
        "syncflows.Destination", null=True, on_delete=models.CASCADE
    )
    syncs = models.PositiveIntegerField(default=0)
    clean = models.PositiveIntegerField(default=0)
    excepted = models.PositiveIntegerField(default=0)

    class Meta:
        # The dashboard selects a range of slots. No unique constraint: with
        # a null destination, PostgreSQL before 15 and SQLite treat every row
        # as distinct. The fold serialises on the watermark row instead.
        indexes = [models.Index(fields=["slot"])]

    def __str__(self):
        return f"{self.syncs} syncs from {self.slot:%Y-%m-%d %H:%M} UTC"


class RevenueSummary(models.Model):
    """The command facts of one slot, segment and currency, summed."""

    slot = models.DateTimeField()
    brief = models.ForeignKey("syncflows.Brief", on_delete=models.CASCADE)
    connector = models.ForeignKey("syncflows.Connector", on_delete=models.CASCADE)
    business_unit = models.CharField(max_length=64, blank=True)
    destination = models.ForeignKey("syncflows.Destination", on_delete=models.CASCADE)
    currency = models.TextField(blank=True)
    commands = models.PositiveIntegerField(default=0)
    amount = models.DecimalField(max_digits=20, decimal_places=3, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "slot",
                    "brief",
                    "connector",
                    "business_unit",
                    "destination",
                    "currency",
                ],
                name="revenue_summary_once",
            )
        ]

    def __str__(self):
        return f"{self.amount} {self.currency} from {self.slot:%Y-%m-%d %H:%M} UTC"


class InvoiceSummary(models.Model):
    """The invoice snapshots of one slot of ``synced_at``, segment and currency.

    ``billed`` counts the posted and paid invoices, and ``billed_amount`` sums
    their totals less credit notes, as revenue invoiced counts them.
    """

    slot = models.DateTimeField()
    brief = models.ForeignKey("syncflows.Brief", on_delete=models.CASCADE)
    business_unit = models.CharField(max_length=64, blank=True)
    destination = models.ForeignKey("syncflows.Destination", on_delete=models.CASCADE)
    currency = models.CharField(max_length=3, blank=True)
    invoices = models.PositiveIntegerField(default=0)
    accurate = models.PositiveIntegerField(default=0)
    billed = models.PositiveIntegerField(default=0)
    billed_amount = models.DecimalField(max_digits=20, decimal_places=3, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["slot", "brief", "business_unit", "destination", "currency"],
                name="invoice_summary_once",
            )
        ]

    def __str__(self):
        return f"{self.invoices} invoices from {self.slot:%Y-%m-%d %H:%M} UTC"


class CashSummary(models.Model):
    """The paid invoice snapshots of one payment date and segment.

    Only snapshots with a CRM close date count, and ``cash_days`` sums the
    days from that date to the payment date.
    """

    paid_on = models.DateField()
    brief = models.ForeignKey("syncflows.Brief", on_delete=models.CASCADE)
    business_unit = models.CharField(max_length=64, blank=True)
    destination = models.ForeignKey("syncflows.Destination", on_delete=models.CASCADE)
    paid = models.PositiveIntegerField(default=0)
    cash_days = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["paid_on", "brief", "business_unit", "destination"],
                name="cash_summary_once",
            )
        ]

    def __str__(self):
        return f"{self.paid} invoices paid on {self.paid_on}"


class SummaryWatermark(models.Model):
    """How far the summary has read the ledger. The table has one row.

    Every ledger row with an id up to ``ledger_id`` has been folded in.
    ``pending`` lists ``[max_id, xmax]`` pairs from recent folds: once every
    PostgreSQL transaction older than ``xmax`` has ended, no row up to
    ``max_id`` can still appear, so ``ledger_id`` may move up to it.
    """

    ledger_id = models.BigIntegerField(default=0)
    pending = models.JSONField(default=list, blank=True)
    rebuild = models.BooleanField(default=False, help_text="Rebuild at the next fold.")
    folded_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"KPI summary folded up to ledger row {self.ledger_id}"
