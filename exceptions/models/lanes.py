from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models


class Lane(models.Model):
    """A queue of exception cases that share a kind of work and an owner group."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    owner_group = models.ForeignKey(
        Group, on_delete=models.PROTECT, related_name="lanes"
    )
    sla_hours = models.PositiveIntegerField(default=24)
    business_hours = models.BooleanField(
        default=False, help_text="Count the SLA in business hours only."
    )
    # Reason codes that land here when no ownership rule names a lane.
    reason_codes = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class OwnershipRule(models.Model):
    """Who owns a case, by keyword, business unit, destination and reason code.

    Empty fields match anything. The rule with the most filled fields wins;
    among equally specific rules the lower priority number wins, then the
    older rule (lower id).
    """

    keyword = models.CharField(max_length=64, blank=True)
    business_unit = models.CharField(max_length=64, blank=True)
    destination = models.ForeignKey(
        "syncflows.Destination", null=True, blank=True, on_delete=models.CASCADE
    )
    reason_code = models.CharField(max_length=32, blank=True)
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    owner_group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.PROTECT
    )
    lane = models.ForeignKey(Lane, on_delete=models.PROTECT, related_name="rules")
    priority = models.PositiveIntegerField(default=100)

    class Meta:
        ordering = ["priority", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(owner_user__isnull=False)
                | models.Q(owner_group__isnull=False),
                name="ownership_rule_has_owner",
                violation_error_message="Name an owner user or an owner group.",
            )
        ]

    def __str__(self):
        scope = "/".join(
            v or "*"
            for v in (
                self.keyword,
                self.business_unit,
                self.destination_id and str(self.destination_id),
                self.reason_code,
            )
        )
        return f"{scope} → {self.owner_user or self.owner_group}"

    @property
    def specificity(self) -> int:
        return sum(
            bool(v)
            for v in (
                self.keyword,
                self.business_unit,
                self.destination_id,
                self.reason_code,
            )
        )
