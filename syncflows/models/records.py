from django.db import models


class SourceRecord(models.Model):
    """The last-known state of one CRM record, merged from its changes.

    ``field_versions`` stores, per field, the ``[occurred_at_iso, sequence]`` of
    the change that last set it. A later-arriving change that is older than a
    field's version does not overwrite that field, so an out-of-order delivery
    never rolls the state back.
    """

    connector = models.ForeignKey(
        "syncflows.Connector", on_delete=models.PROTECT, related_name="records"
    )
    object_type = models.CharField(max_length=64)
    record_id = models.CharField(max_length=200)
    record_key = models.CharField(max_length=300, unique=True)
    state = models.JSONField(default=dict)
    field_versions = models.JSONField(default=dict)
    revision = models.PositiveIntegerField(default=0)
    last_occurred_at = models.DateTimeField(null=True, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    # The record key of the parent, kept while the parent has not arrived yet.
    parent_ref = models.CharField(max_length=300, blank=True, db_index=True)
    is_deleted = models.BooleanField(default=False)
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged"
    )
    # Raised when the ERP document for this record is compensated, so that a
    # replay after the reversal gets a new idempotency key.
    order_generation = models.PositiveIntegerField(default=1)
    business_unit = models.CharField(max_length=64, blank=True)
    region = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["record_key"]

    def __str__(self):
        return self.record_key


class RecordAlias(models.Model):
    """Another CRM id that now means the same record, for example after a merge."""

    record = models.ForeignKey(SourceRecord, on_delete=models.CASCADE, related_name="aliases")
    alias_key = models.CharField(max_length=300, unique=True)
    alias_id = models.CharField(max_length=200)

    def __str__(self):
        return f"{self.alias_key} → {self.record.record_key}"


class RecordChange(models.Model):
    """The normalised form of one inbound event, applied to a source record."""

    class Status(models.TextChoices):
        APPLIED = "applied", "Applied"
        STALE = "stale", "Stale"
        MATCHED = "matched", "Matched"
        UNMATCHED = "unmatched", "No trigger matched"
        FAILED = "failed", "Failed"

    record = models.ForeignKey(SourceRecord, on_delete=models.PROTECT, related_name="changes")
    event = models.OneToOneField(
        "syncflows.InboundEvent", on_delete=models.PROTECT, related_name="change"
    )
    change_type = models.CharField(max_length=16)
    revision = models.PositiveIntegerField()
    occurred_at = models.DateTimeField()
    state = models.JSONField(help_text="The record's whole known state after the change.")
    previous = models.JSONField(help_text="The record's known state before the change.")
    changed = models.JSONField(default=list, help_text="Fields whose value changed.")
    status = models.CharField(max_length=16, choices=Status.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The sweep's query: changes whose match step never ran.
            models.Index(
                fields=["created_at"],
                condition=models.Q(status="applied"),
                name="record_change_unmatched",
            )
        ]
