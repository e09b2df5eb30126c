"""The exception case FilterSet shared by the queue pages and the API.

Time-based filters (SLA state, age) compare with the time the queryset is
filtered, so build a new FilterSet for every request.
"""

from datetime import timedelta

import django_filters
from django import forms
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.utils import timezone

from exceptions.models import ExceptionCase, Lane
from syncflows.filters import destination_filter, reason_code_filter
from syncflows.services.trace import matching_records

# A case whose due time is less than this far ahead is "due soon".
DUE_SOON_WINDOW = timedelta(hours=4)

OPEN = "open"
STATE_CHOICES = [
    (OPEN, "Open (open, assigned or acknowledged)"),
    *[
        (value, label)
        for value, label in ExceptionCase.State.choices
        if value != ExceptionCase.State.OPEN
    ],
]

BREACHED = "breached"
DUE_SOON = "due_soon"
ON_TRACK = "on_track"
SLA_CHOICES = [
    (BREACHED, "Breached"),
    (DUE_SOON, "Due within 4 hours"),
    (ON_TRACK, "On track"),
]


class OwnerField(forms.CharField):
    """A user id, or ``me`` for the user making the request."""

    def clean(self, value):
        value = (super().clean(value) or "").strip()
        if value and value != "me" and not value.isdigit():
            raise ValidationError(
                f'Owner "{value}" is invalid: enter a user id or "me".',
                code="invalid",
            )
        return value


class OwnerFilter(django_filters.CharFilter):
    field_class = OwnerField


class ExceptionCaseFilter(django_filters.FilterSet):
    lane = django_filters.ModelChoiceFilter(
        queryset=Lane.objects.all(),
        to_field_name="slug",
        label="Lane",
        help_text="Lane slug.",
    )
    owner = OwnerFilter(
        method="filter_owner",
        label="Owner",
        help_text='Owner user id, or "me" for the signed-in user.',
    )
    owner_group = django_filters.ModelChoiceFilter(
        queryset=Group.objects.all(), label="Owner group", help_text="Group id."
    )
    keyword = django_filters.CharFilter(label="Keyword")
    business_unit = django_filters.CharFilter(label="Business unit")
    destination = destination_filter()
    reason_code = reason_code_filter()
    state = django_filters.ChoiceFilter(
        choices=STATE_CHOICES,
        method="filter_state",
        label="State",
        help_text='"open" matches open, assigned and acknowledged cases.',
    )
    sla = django_filters.ChoiceFilter(
        choices=SLA_CHOICES,
        method="filter_sla",
        label="SLA",
        help_text=(
            "SLA state of open cases: breached (past due), due_soon (due within "
            "4 hours) or on_track. Closed cases never match."
        ),
    )
    age_min = django_filters.NumberFilter(
        method="filter_age_min",
        min_value=0,
        label="Minimum age (hours)",
        help_text="Only cases opened at least this many hours ago.",
    )
    age_max = django_filters.NumberFilter(
        method="filter_age_max",
        min_value=0,
        label="Maximum age (hours)",
        help_text="Only cases opened at most this many hours ago.",
    )
    q = django_filters.CharFilter(
        method="filter_search",
        label="Search",
        help_text=(
            "CRM record id, alias id, record key, ERP document number or "
            "reference, or idempotency key."
        ),
    )
    ordering = django_filters.OrderingFilter(
        fields=(
            "id",
            "due_at",
            "opened_at",
            "state",
            "reason_code",
            "escalation_level",
            ("lane__name", "lane"),
        )
    )

    class Meta:
        model = ExceptionCase
        fields = [
            "lane",
            "owner",
            "owner_group",
            "keyword",
            "business_unit",
            "destination",
            "reason_code",
            "state",
        ]

    def filter_owner(self, queryset, name, value):
        if value != "me":
            return queryset.filter(owner_user_id=int(value))
        user = getattr(self.request, "user", None)
        if user is None or not user.is_authenticated:
            return queryset.none()
        return queryset.filter(owner_user=user)

    def filter_state(self, queryset, name, value):
        if value == OPEN:
            return queryset.filter(state__in=ExceptionCase.OPEN_STATES)
        return queryset.filter(state=value)

    def filter_sla(self, queryset, name, value):
        now = timezone.now()
        open_cases = queryset.filter(state__in=ExceptionCase.OPEN_STATES)
        if value == BREACHED:
            return open_cases.filter(due_at__lt=now)
        if value == DUE_SOON:
            return open_cases.filter(due_at__gte=now, due_at__lt=now + DUE_SOON_WINDOW)
        return open_cases.filter(due_at__gte=now + DUE_SOON_WINDOW)

    def filter_age_min(self, queryset, name, value):
        return queryset.filter(opened_at__lte=timezone.now() - _hours(value))

    def filter_age_max(self, queryset, name, value):
        return queryset.filter(opened_at__gte=timezone.now() - _hours(value))

    def filter_search(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        record_keys = matching_records(value).values("record_key")
        return queryset.filter(
            Q(record_key=value)
            | Q(record_key__in=record_keys)
            | Q(command__erp_document_number=value)
        )


def _hours(value) -> timedelta:
    # NumberFilter returns a Decimal, and whole seconds are precise enough here.
    return timedelta(seconds=int(value * 3600))
