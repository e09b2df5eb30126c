from django.db import models


class Delivery(models.Model):
    """One HTTP request or file record as it arrived, kept byte for byte."""

    class Status(models.TextChoices):
        # Stored with its events by the webhook endpoint; a worker has not yet
        # applied the events to their records.
        RECEIVED = "received", "Received"
        ACCEPTED = "accepted", "Accepted"
        DUPLICATE = "duplicate", "Duplicate"
        QUARANTINED = "quarantined", "Quarantined"
        REJECTED = "rejected", "Rejected"
        REPLAYED = "replayed", "Replayed"

    class Source(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        FILE = "file", "File import"
        REPLAY = "replay", "Replay"

    connector = models.ForeignKey(
        "syncflows.Connector", on_delete=models.PROTECT, related_name="deliveries"
    )
    received_at = models.DateTimeField(db_index=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    status = models.CharField(max_length=16, choices=Status.choices, db_index=True)
    content_hash = models.CharField(max_length=64)
    body = models.BinaryField()
    size = models.PositiveIntegerField()
    content_type = models.CharField(max_length=200, blank=True)
    # Only the headers needed to verify and replay the delivery; never cookies
    # or authorisation headers.
    headers = models.JSONField(default=dict)
    request_url = models.CharField(max_length=2000, blank=True)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replays"
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            # The sweep's query: deliveries stored but never normalised.
            models.Index(
                fields=["received_at"],
                condition=models.Q(status="received"),
                name="delivery_not_normalised",
            )
        ]

    def __str__(self):
        return f"delivery {self.pk} from {self.connector_id}"


class InboundEvent(models.Model):
    """One CRM event taken from a delivery (a batch may hold many)."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSED = "processed", "Processed"
        STALE = "stale", "Stale"
        FAILED = "failed", "Failed"

    delivery = models.ForeignKey(Delivery, on_delete=models.PROTECT, related_name="events")
    # The dedupe constraint's index starts with the connector, so the key
    # needs no index of its own.
    connector = models.ForeignKey(
        "syncflows.Connector", on_delete=models.PROTECT, related_name="events", db_index=False
    )
    position = models.PositiveIntegerField(help_text="Index of the event in its delivery.")
    crm_event_id = models.CharField(max_length=200, blank=True, db_index=True)
    dedupe_key = models.CharField(max_length=200)
    event_type = models.CharField(max_length=100, blank=True)
    object_type = models.CharField(max_length=64)
    record_id = models.CharField(max_length=200)
    occurred_at = models.DateTimeField()
    sequence = models.BigIntegerField(null=True, blank=True)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.RECEIVED
    )
    received_at = models.DateTimeField(db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            # Deduplication: a second delivery of the same CRM event fails this
            # constraint, and the receiver records it as a duplicate instead.
            models.UniqueConstraint(
                fields=["connector", "dedupe_key"], name="inbound_event_dedupe"
            )
        ]
        indexes = [
            models.Index(fields=["connector", "object_type", "record_id"]),
            # The sweep's query: events received but never processed.
            models.Index(
                fields=["received_at"],
                condition=models.Q(status="received"),
                name="inbound_event_unprocessed",
            ),
        ]

    def __str__(self):
        return f"{self.connector_id}:{self.object_type}:{self.record_id} event {self.pk}"

    @property
    def record_key(self) -> str:
        return f"{self.connector.record_namespace}:{self.object_type}:{self.record_id}"
