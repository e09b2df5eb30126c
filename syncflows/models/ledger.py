from django.conf import settings
from django.db import models

from meshline.fields import BulkJSONField


class LedgerEntry(models.Model):
    """One step of one CRM change on its way to the ERP. Append-only."""

    class Step(models.TextChoices):
        RECEIVE = "receive", "Received"
        DUPLICATE = "duplicate", "Duplicate delivery"
        REJECT = "reject", "Rejected delivery"
        QUARANTINE = "quarantine", "Quarantined delivery"
        NORMALISE = "normalise", "Normalised"
        STALE = "stale", "Stale change"
        MATCH = "match", "Trigger matched"
        NO_MATCH = "no_match", "No trigger matched"
        TRANSFORM = "transform", "Transformed"
        WAIT = "wait", "Waiting"
        VALIDATE = "validate", "Validated"
        ROUTE = "route", "Routed"
        ENQUEUE = "enqueue", "Command queued"
        UNCHANGED = "unchanged", "Same command already queued"
        SUPERSEDE = "supersede", "Superseded"
        CLAIM = "claim", "Claimed by a worker"
        EXISTING = "existing", "Found in the ERP"
        PREFLIGHT = "preflight", "Preflight"
        EXECUTE = "execute", "Executed"
        RETRY = "retry", "Retry scheduled"
        FAIL = "fail", "Failed"
        REQUEUE = "requeue", "Re-queued by the sweep"
        EXCEPTION = "exception", "Exception case"
        ACTION = "action", "Action taken"
        COMPENSATE = "compensate", "Compensated"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    step = models.CharField(max_length=16, choices=Step.choices)
    ok = models.BooleanField(default=True)
    # The pipeline writes about eight rows an event, so the table keeps few
    # indexes: a plain one on the record key (no pattern index, since no
    # query matches a prefix), and partial ones on the references, which
    # most rows leave empty (see Meta).
    record_key = models.CharField(max_length=300, blank=True)
    connector = models.ForeignKey(
        "syncflows.Connector", null=True, blank=True, on_delete=models.PROTECT, db_index=False
    )
    delivery = models.ForeignKey(
        "syncflows.Delivery", null=True, blank=True, on_delete=models.PROTECT, db_index=False
    )
    event = models.ForeignKey(
        "syncflows.InboundEvent", null=True, blank=True, on_delete=models.PROTECT, db_index=False
    )
    run = models.ForeignKey(
        "syncflows.SyncRun", null=True, blank=True, on_delete=models.PROTECT, db_index=False
    )
    command = models.ForeignKey(
        "syncflows.Command", null=True, blank=True, on_delete=models.PROTECT, db_index=False
    )
    # Exception cases live in an app that depends on this one, so the ledger
    # stores the case id without a foreign key.
    case_id = models.PositiveBigIntegerField(null=True, blank=True)
    reason_code = models.CharField(max_length=32, blank=True)
    message = models.TextField()
    payload_before = BulkJSONField(null=True, blank=True)
    payload_after = BulkJSONField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, db_index=False
    )

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["record_key"], name="ledger_record_key"),
            *(
                models.Index(
                    fields=[name],
                    condition=models.Q(**{f"{name}__isnull": False}),
                    name=f"ledger_{name}",
                )
                for name in ("connector", "delivery", "event", "run", "command", "case_id", "actor")
            ),
        ]

    def __str__(self):
        return f"{self.get_step_display()}: {self.message[:60]}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise TypeError("Ledger entries are append-only and cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Ledger entries are append-only and cannot be deleted.")
