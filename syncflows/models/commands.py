from django.db import models

from meshline.fields import BulkJSONField


class SyncRun(models.Model):
    """One brief applied to one record change: transform, validate, route."""

    class State(models.TextChoices):
        QUEUED = "queued", "Command queued"
        WAITING = "waiting", "Waiting for more changes"
        FAILED = "failed", "Failed"
        UNCHANGED = "unchanged", "Same command already sent"
        SUPERSEDED = "superseded", "Superseded by a later change"

    brief_version = models.ForeignKey(
        "syncflows.BriefVersion", on_delete=models.PROTECT, related_name="runs"
    )
    change = models.ForeignKey(
        "syncflows.RecordChange", on_delete=models.PROTECT, related_name="runs"
    )
    record = models.ForeignKey(
        "syncflows.SourceRecord", on_delete=models.PROTECT, related_name="runs"
    )
    trigger_version = models.ForeignKey(
        "syncflows.TriggerVersion", null=True, on_delete=models.PROTECT, related_name="runs"
    )
    state = models.CharField(max_length=16, choices=State.choices)
    payload = BulkJSONField(null=True, blank=True, help_text="The mapped command.")
    reason_code = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    error_detail = BulkJSONField(default=dict, blank=True)
    command = models.ForeignKey(
        "syncflows.Command", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]


class Command(models.Model):
    """An ERP command in the outbox, sent by a worker exactly once.

    The idempotency key is unique among live commands; a superseded command
    keeps its key for the record but no longer blocks a new one.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        RETRY_SCHEDULED = "retry_scheduled", "Retry scheduled"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SUPERSEDED = "superseded", "Superseded"
        COMPENSATED = "compensated", "Compensated"
        HELD = "held", "Held for review"

    OPEN_STATES = (State.PENDING, State.SENT, State.RETRY_SCHEDULED)

    class Mode(models.TextChoices):
        LIVE = "live", "Live"
        DRY_RUN = "dry_run", "Dry run"

    idempotency_key = models.CharField(max_length=64)
    command_type = models.CharField(max_length=64)
    brief_version = models.ForeignKey(
        "syncflows.BriefVersion", on_delete=models.PROTECT, related_name="commands"
    )
    record = models.ForeignKey(
        "syncflows.SourceRecord", on_delete=models.PROTECT, related_name="commands"
    )
    destination = models.ForeignKey(
        "syncflows.Destination", on_delete=models.PROTECT, related_name="commands"
    )
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.LIVE)
    payload = BulkJSONField()
    payload_hash = models.CharField(max_length=64)
    # Commands with the same ordering key run one at a time, oldest first.
    ordering_key = models.CharField(max_length=300, db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=100, blank=True)
    reason_code = models.CharField(max_length=32, blank=True)
    last_error = models.TextField(blank=True)
    result = BulkJSONField(null=True, blank=True)
    erp_reference = models.CharField(max_length=200, blank=True, db_index=True)
    erp_document_number = models.CharField(max_length=200, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=~models.Q(state="superseded"),
                name="command_live_idempotency_key",
            )
        ]
        indexes = [
            # The claim query: commands due now, oldest first, that a worker may take.
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=models.Q(state__in=["pending", "retry_scheduled"]),
                name="command_due",
            ),
            # The sweep's query: commands claimed by a worker that never finished.
            models.Index(
                fields=["claimed_at"],
                condition=models.Q(state="sent"),
                name="command_claimed",
            ),
        ]

    def __str__(self):
        return f"command {self.pk} {self.command_type} ({self.state})"
