"""FilterSets shared by the HTML lists and the API endpoints.

A view builds the FilterSet from the request's GET parameters and a queryset
that already selects its related rows, then reads ``filterset.qs``. The DRF
endpoints use the same classes through ``filterset_class``. No filter here
runs a query per row: slug filters validate the slug once and then filter by
a join.
"""

from datetime import UTC

import django_filters
from django.core.exceptions import ValidationError

from syncflows.adapters.base import REASONS
from syncflows.models import Command, Connector, Delivery, Destination, InboundEvent

REASON_CODE_CHOICES = [(code, title) for code, (title, _fix) in REASONS.items()]


def connector_filter() -> django_filters.ModelChoiceFilter:
    return django_filters.ModelChoiceFilter(
        # Only the columns the choices need: the encrypted secrets stay unread.
        queryset=Connector.objects.only("pk", "slug", "name"),
        to_field_name="slug",
        label="Connector",
        help_text="Connector slug.",
    )


def destination_filter(field_name: str = "destination"):
    return django_filters.ModelChoiceFilter(
        field_name=field_name,
        queryset=Destination.objects.only("pk", "slug", "name"),
        to_field_name="slug",
        label="Destination",
        help_text="Destination slug.",
    )


def reason_code_filter() -> django_filters.ChoiceFilter:
    return django_filters.ChoiceFilter(choices=REASON_CODE_CHOICES, label="Reason")


class UtcDateTimeRangeField(django_filters.fields.IsoDateTimeRangeField):
    """An ISO 8601 range whose bounds are converted to UTC and kept within
    the years 1900 to 9999, which every supported database can compare."""

    def clean(self, value):
        result = super().clean(value)
        if result is None:
            return result
        return slice(_utc(result.start), _utc(result.stop))


def _utc(moment):
    if moment is None:
        return None
    try:
        moment = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValidationError("The date-time is out of range.") from None
    if not 1900 <= moment.year <= 9999:
        raise ValidationError("Give a date-time between the years 1900 and 9999.")
    return moment


class UtcDateTimeFromToRangeFilter(django_filters.IsoDateTimeFromToRangeFilter):
    field_class = UtcDateTimeRangeField


def time_range_filter(field_name: str, label: str):
    """Build a range filter read from ``<field>_after`` and ``<field>_before``.

    Both bounds are inclusive ISO 8601 date-times. A value without a UTC
    offset is read in the current time zone."""
    return UtcDateTimeFromToRangeFilter(field_name=field_name, label=label)


class DeliveryFilter(django_filters.FilterSet):
    connector = connector_filter()
    status = django_filters.ChoiceFilter(choices=Delivery.Status.choices)
    source = django_filters.ChoiceFilter(choices=Delivery.Source.choices)
    received_at = time_range_filter("received_at", "Received")
    ordering = django_filters.OrderingFilter(
        fields=("id", "received_at", "status", "source", "size")
    )

    class Meta:
        model = Delivery
        fields = ["connector", "status", "source", "received_at"]


class InboundEventFilter(django_filters.FilterSet):
    connector = connector_filter()
    status = django_filters.ChoiceFilter(choices=InboundEvent.Status.choices)
    object_type = django_filters.CharFilter(label="Object type")
    record_id = django_filters.CharFilter(label="CRM record id")
    event_type = django_filters.CharFilter(label="Event type")
    received_at = time_range_filter("received_at", "Received")
    ordering = django_filters.OrderingFilter(
        fields=("id", "received_at", "occurred_at", "status", "object_type")
    )

    class Meta:
        model = InboundEvent
        fields = [
            "connector",
            "status",
            "object_type",
            "record_id",
            "event_type",
            "received_at",
        ]


class CommandFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=Command.State.choices)
    destination = destination_filter()
    command_type = django_filters.CharFilter(label="Command type")
    reason_code = reason_code_filter()
    record_key = django_filters.CharFilter(
        field_name="record__record_key",
        lookup_expr="icontains",
        label="Record key contains",
    )
    idempotency_key = django_filters.CharFilter(label="Idempotency key")
    erp_document_number = django_filters.CharFilter(label="ERP document number")
    created_at = time_range_filter("created_at", "Created")
    ordering = django_filters.OrderingFilter(
        fields=("id", "created_at", "finished_at", "state", "attempts", "command_type")
    )

    class Meta:
        model = Command
        fields = [
            "state",
            "destination",
            "command_type",
            "reason_code",
            "record_key",
            "idempotency_key",
            "erp_document_number",
            "created_at",
        ]
