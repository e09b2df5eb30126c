"""Read-only API representation of exception cases."""

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from exceptions.filters import DUE_SOON_WINDOW, SLA_CHOICES
from exceptions.models import ExceptionCase


class ExceptionCaseSerializer(serializers.ModelSerializer):
    lane = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    owner_user = serializers.SlugRelatedField(slug_field="username", read_only=True)
    owner_user_id = serializers.IntegerField(read_only=True, allow_null=True)
    owner_group = serializers.SlugRelatedField(slug_field="name", read_only=True)
    brief = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    destination = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    sla_state = serializers.SerializerMethodField()

    class Meta:
        model = ExceptionCase
        fields = [
            "id",
            "state",
            "reason_code",
            "title",
            "message",
            "suggested_fix",
            "detail",
            "lane",
            "owner_user",
            "owner_user_id",
            "owner_group",
            "record_key",
            "keyword",
            "business_unit",
            "brief",
            "destination",
            "run",
            "command",
            "event",
            "opened_at",
            "due_at",
            "acknowledged_at",
            "closed_at",
            "escalation_level",
            "resolution_note",
            "sla_state",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=SLA_CHOICES, allow_null=True))
    def get_sla_state(self, case) -> str | None:
        """Return the SLA state of an open case, or None for a closed one."""
        if not case.is_open:
            return None
        now = timezone.now()
        if case.due_at < now:
            return "breached"
        if case.due_at < now + DUE_SOON_WINDOW:
            return "due_soon"
        return "on_track"
