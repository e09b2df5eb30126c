"""Work that runs beside a case: notifications and bulk actions."""

from django.conf import settings
from django.db import models


class Notification(models.Model):
    """One message about a case on one channel, retried until sent or given up."""

    class Channel(models.TextChoices):
        SLACK = "slack", "Slack webhook"
        EMAIL = "email", "E-mail"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    case = models.ForeignKey(
        "exceptions.ExceptionCase",
        on_delete=models.CASCADE,
        related_name="notifications",
    )
    channel = models.CharField(max_length=8, choices=Channel.choices)
    event = models.CharField(max_length=32, help_text="opened, reminder, reassigned, …")
    recipients = models.JSONField(default=list, blank=True)
    subject = models.CharField(max_length=300)
    body = models.TextField()
    status = models.CharField(
        max_length=8, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The retry sweep's query: pending notifications that are due.
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="notification_due",
            )
        ]

    def __str__(self):
        return f"{self.channel} {self.event} for case {self.case_id} ({self.status})"


class BulkAction(models.Model):
    """One action applied to many cases in the background, with its progress."""

    class Action(models.TextChoices):
        ASSIGN = "assign", "Assign"
        RETRY = "retry", "Retry"
        RESOLVE = "resolve", "Resolve"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    action = models.CharField(max_length=8, choices=Action.choices)
    state = models.CharField(max_length=8, choices=State.choices, default=State.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    case_ids = models.JSONField(default=list)
    params = models.JSONField(default=dict, blank=True)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    # The first refusals, as {"case": id, "message": text}, so a person can follow up.
    errors = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"bulk {self.action} {self.pk} ({self.done}/{self.total})"

    @property
    def percent(self) -> int:
        return 100 if not self.total else int(self.done * 100 / self.total)

    @property
    def is_finished(self) -> bool:
        return self.state in (self.State.DONE, self.State.FAILED)
