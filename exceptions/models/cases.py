from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models

from meshline.logging import log_context


class ExceptionCase(models.Model):
    """A failure that needs a person: what failed, who owns it, by when."""

    class State(models.TextChoices):
        OPEN = "open", "Open"
        ASSIGNED = "assigned", "Assigned"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        RESOLVED = "resolved", "Resolved"
        DISMISSED = "dismissed", "Dismissed"

    OPEN_STATES = (State.OPEN, State.ASSIGNED, State.ACKNOWLEDGED)

    reason_code = models.CharField(max_length=32, db_index=True)
    title = models.CharField(max_length=300)
    message = models.TextField(help_text="What failed, in plain words.")
    suggested_fix = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    lane = models.ForeignKey(
        "exceptions.Lane", on_delete=models.PROTECT, related_name="cases"
    )
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="owned_cases",
    )
    owner_group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.PROTECT
    )
    record_key = models.CharField(max_length=300, db_index=True)
    keyword = models.CharField(max_length=64, blank=True)
    business_unit = models.CharField(max_length=64, blank=True)
    brief = models.ForeignKey(
        "syncflows.Brief", null=True, blank=True, on_delete=models.PROTECT
    )
    destination = models.ForeignKey(
        "syncflows.Destination", null=True, blank=True, on_delete=models.PROTECT
    )
    run = models.ForeignKey(
        "syncflows.SyncRun", null=True, blank=True, on_delete=models.PROTECT
    )
    command = models.ForeignKey(
        "syncflows.Command", null=True, blank=True, on_delete=models.PROTECT
    )
    event = models.ForeignKey(
        "syncflows.InboundEvent", null=True, blank=True, on_delete=models.PROTECT
    )
    opened_at = models.DateTimeField(db_index=True)
    due_at = models.DateTimeField(db_index=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    escalation_level = models.PositiveSmallIntegerField(default=0)
    resolution_note = models.TextField(blank=True)

    class Meta:
        ordering = ["due_at", "id"]
        indexes = [
            # The queue's query: open cases of a lane by due time.
            models.Index(
                fields=["lane", "due_at"],
                condition=models.Q(state__in=["open", "assigned", "acknowledged"]),
                name="case_open_by_lane",
            ),
            # The queue's default order for open cases: soonest due first.
            models.Index(
                fields=["due_at", "id"],
                condition=models.Q(state__in=["open", "assigned", "acknowledged"]),
                name="case_open_by_due",
            ),
            # The "my work" query: open cases of one owner by due time.
            models.Index(
                fields=["owner_user", "due_at"],
                condition=models.Q(state__in=["open", "assigned", "acknowledged"]),
                name="case_open_by_owner",
            ),
        ]

    def __str__(self):
        return f"case {self.pk}: {self.title}"

    @property
    def is_open(self) -> bool:
        return self.state in self.OPEN_STATES

    def log_context(self):
        """Return a log_context() block that puts this case's ids on log lines."""
        return log_context(
            case_id=self.pk, command_id=self.command_id, event_id=self.event_id
        )


class CaseHistory(models.Model):
    """One step in a case's life. Append-only."""

    case = models.ForeignKey(
        ExceptionCase, on_delete=models.CASCADE, related_name="history"
    )
    at = models.DateTimeField(auto_now_add=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    action = models.CharField(max_length=32)
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]
        verbose_name_plural = "case history"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise TypeError("Case history is append-only and cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Case history is append-only and cannot be deleted.")
