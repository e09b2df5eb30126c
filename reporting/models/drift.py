from django.conf import settings
from django.db import models


class DeclaredSchema(models.Model):
    """The fields a connector's object type is expected to carry.

    ``fields`` maps a field name to ``{"type": ..., "required": bool}`` with
    JSON types (string, number, integer, boolean, object, array). A required
    field missing from a delivered record counts as removed at once. An
    optional field counts as removed only when no delivery in the nightly
    window carried it.
    """

    connector = models.ForeignKey("syncflows.Connector", on_delete=models.CASCADE)
    object_type = models.CharField(max_length=64)
    fields = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["connector", "object_type"]
        constraints = [
            models.UniqueConstraint(
                fields=["connector", "object_type"], name="declared_schema_unique"
            )
        ]

    def __str__(self):
        return f"{self.connector.slug}:{self.object_type}"


class ObservedField(models.Model):
    """A field and JSON type seen in real deliveries of one connector."""

    connector = models.ForeignKey("syncflows.Connector", on_delete=models.CASCADE)
    object_type = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    json_type = models.CharField(max_length=16)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    seen_count = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["connector", "object_type", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["connector", "object_type", "name", "json_type"],
                name="observed_field_unique",
            )
        ]

    def __str__(self):
        return f"{self.connector_id}:{self.object_type}.{self.name} ({self.json_type})"


class DriftFinding(models.Model):
    """One difference between observed deliveries and the declared schema.

    A blocking finding names a field that an active brief uses: that brief's
    commands are held until a Sales Ops user reviews the finding.
    """

    class Kind(models.TextChoices):
        ADDED = "added", "Added"
        REMOVED = "removed", "Removed"
        RENAMED = "renamed", "Renamed"
        RETYPED = "retyped", "Type changed"

    class State(models.TextChoices):
        OPEN = "open", "Waiting for review"
        REVIEWED = "reviewed", "Reviewed"

    connector = models.ForeignKey("syncflows.Connector", on_delete=models.CASCADE)
    object_type = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    field_name = models.CharField(max_length=200)
    new_name = models.CharField(max_length=200, blank=True, help_text="For a rename.")
    declared_type = models.CharField(max_length=16, blank=True)
    observed_type = models.CharField(max_length=16, blank=True)
    blocking = models.BooleanField(default=False)
    briefs = models.ManyToManyField("syncflows.Brief", blank=True, related_name="+")
    record_key = models.CharField(
        max_length=300, blank=True, help_text="The record whose delivery showed it."
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    detected_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-detected_at", "-id"]
        constraints = [
            # One open finding per source, field and kind: later deliveries
            # showing the same drift refresh it instead of adding rows.
            models.UniqueConstraint(
                fields=["connector", "object_type", "kind", "field_name"],
                condition=models.Q(state="open"),
                name="drift_finding_open_once",
            )
        ]

    def __str__(self):
        return f"{self.get_kind_display()} {self.field_name} on {self.object_type}"
