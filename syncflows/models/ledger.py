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
    record_key = models.CharField(max_length=300, blank=True, db_index=True)
    connector = models.ForeignKey(
        "syncflows.Connector", null=True, blank=True, on_delete=models.PROTECT
    )
    delivery = models.ForeignKey(
        "syncflows.Delivery", null=True, blank=True, on_delete=models.PROTECT
    )
    event = models.ForeignKey(
        "syncflows.InboundEvent", null=True, blank=True, on_delete=models.PROTECT
    )
    run = models.ForeignKey("syncflows.SyncRun", null=True, blank=True, on_delete=models.PROTECT)
    command = models.ForeignKey(
        "syncflows.Command", null=True, blank=True, on_delete=models.PROTECT
    )
    # Exception cases live in an app that depends on this one, so the ledger
    # stores the case id without a foreign key.
    case_id = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)
    reason_code = models.CharField(max_length=32, blank=True)
    message = models.TextField()
    payload_before = BulkJSONField(null=True, blank=True)
    payload_after = BulkJSONField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "ledger entries"

    def __str__(self):
        return f"{self.get_step_display()}: {self.message[:60]}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise TypeError("Ledger entries are append-only and cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Ledger entries are append-only and cannot be deleted.")
