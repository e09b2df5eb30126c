"""Read-only API representations of deliveries, inbound events, commands and traces.

Related rows appear by slug or id and are loaded by the views' querysets, so
no serializer here runs a query per row.
"""

from rest_framework import serializers

from syncflows.models import Command, Delivery, InboundEvent, LedgerEntry


class DeliverySerializer(serializers.ModelSerializer):
    """A delivery without its body, headers or URL, which can hold personal data
    or tokens."""

    connector = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "connector",
            "received_at",
            "source",
            "status",
            "content_hash",
            "size",
            "content_type",
            "error",
            "error_code",
            "replay_of",
        ]
        read_only_fields = fields


class InboundEventSerializer(serializers.ModelSerializer):
    connector = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = InboundEvent
        fields = [
            "id",
            "delivery",
            "connector",
            "position",
            "crm_event_id",
            "event_type",
            "object_type",
            "record_id",
            "occurred_at",
            "sequence",
            "status",
            "received_at",
            "processed_at",
            "error",
        ]
        read_only_fields = fields


class InboundEventDetailSerializer(InboundEventSerializer):
    """An inbound event with the CRM payload, returned for one event only."""

    class Meta(InboundEventSerializer.Meta):
        fields = [*InboundEventSerializer.Meta.fields, "payload"]
        read_only_fields = fields


class CommandSerializer(serializers.ModelSerializer):
    destination = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    record_key = serializers.CharField(source="record.record_key", read_only=True)
    brief = serializers.CharField(source="brief_version.brief.slug", read_only=True)
    brief_version = serializers.IntegerField(
        source="brief_version.number", read_only=True
    )

    class Meta:
        model = Command
        fields = [
            "id",
            "state",
            "command_type",
            "mode",
            "idempotency_key",
            "destination",
            "record_key",
            "brief",
            "brief_version",
            "attempts",
            "next_attempt_at",
            "reason_code",
            "last_error",
            "erp_reference",
            "erp_document_number",
            "created_at",
            "updated_at",
            "finished_at",
        ]
        read_only_fields = fields


class CommandDetailSerializer(CommandSerializer):
    """A command with its payload and the ERP's result, returned for one command."""

    class Meta(CommandSerializer.Meta):
        fields = [*CommandSerializer.Meta.fields, "payload", "result"]
        read_only_fields = fields


# The serializers below only describe the trace endpoints' output for the
# OpenAPI schema. The views return syncflows.services.trace.build_trace as is.


class TraceRecordSerializer(serializers.Serializer):
    record_key = serializers.CharField()
    connector = serializers.CharField(help_text="Connector slug.")
    object_type = serializers.CharField()
    record_id = serializers.CharField(help_text="CRM record id.")
    state = serializers.JSONField(help_text="Last-known state of the CRM record.")
    revision = serializers.IntegerField()
    is_deleted = serializers.BooleanField()


class TraceEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    step = serializers.ChoiceField(choices=LedgerEntry.Step.choices)
    step_label = serializers.CharField()
    ok = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    message = serializers.CharField()
    reason_code = serializers.CharField(allow_blank=True)
    payload_before = serializers.JSONField(allow_null=True)
    payload_after = serializers.JSONField(allow_null=True)
    command_id = serializers.IntegerField(allow_null=True)
    case_id = serializers.IntegerField(allow_null=True)
    event_id = serializers.IntegerField(allow_null=True)
    delivery_id = serializers.IntegerField(allow_null=True)
    run_id = serializers.IntegerField(allow_null=True)


class TraceCommandSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.ChoiceField(choices=Command.State.choices)
    command_type = serializers.CharField()
    mode = serializers.ChoiceField(choices=Command.Mode.choices)
    idempotency_key = serializers.CharField()
    payload = serializers.JSONField()
    erp_reference = serializers.CharField(allow_blank=True)
    erp_document_number = serializers.CharField(allow_blank=True)
    attempts = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True)
    reason_code = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    destination = serializers.CharField(help_text="Destination slug.")


class TraceCaseSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.CharField()
    reason_code = serializers.CharField()
    title = serializers.CharField()
    lane = serializers.CharField(help_text="Lane slug.")
    owner = serializers.CharField(
        allow_null=True, help_text="Owner user name, or the owner group's name."
    )


class TraceSerializer(serializers.Serializer):
    record_key = serializers.CharField()
    record = TraceRecordSerializer(
        allow_null=True, help_text="Null when no source record has this key."
    )
    entries = TraceEntrySerializer(many=True, help_text="Ledger entries, oldest first.")
    commands = TraceCommandSerializer(many=True)
    cases = TraceCaseSerializer(many=True)


class TraceSearchSerializer(serializers.Serializer):
    record_keys = serializers.ListField(
        child=serializers.CharField(),
        help_text="Every matching record key, at most 50.",
    )
    traces = TraceSerializer(
        many=True, help_text="Traces of the first 5 record keys, in the same order."
    )
