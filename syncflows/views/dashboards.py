"""The dashboards page: pipeline counts and commands per day."""

import datetime

from django.apps import apps
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from syncflows.adapters.base import REASONS
from syncflows.models import Command, Delivery, InboundEvent

CHART_DAYS = 30


@require_GET
def dashboards(request):
    chart = commands_per_day()
    context = {
        "nav": "dashboards",
        "event_counts": counts_by(InboundEvent, "status"),
        "delivery_counts": counts_by(Delivery, "status"),
        "command_counts": counts_by(Command, "state"),
        "case_counts": open_cases_by_reason(),
        "chart": chart,
        "chart_rows": list(zip(chart["days"], chart["totals"], strict=True)),
        "chart_days": CHART_DAYS,
        "time_zone": timezone.get_current_timezone_name(),
    }
    return render(request, "syncflows/dashboards.html", context)


def counts_by(model, field: str) -> dict:
    """Count rows per value of a choice field in one grouped query.

    Returns the total and one row per choice, zero for choices with no rows,
    in the order the choices are declared.
    """
    rows = model.objects.order_by().values(field).annotate(n=Count("id"))
    found = {row[field]: row["n"] for row in rows}
    choices = model._meta.get_field(field).choices
    return {
        "total": sum(found.values()),
        "rows": [
            {"value": value, "label": label, "count": found.get(value, 0)}
            for value, label in choices
        ],
    }


def open_cases_by_reason() -> dict:
    # NOTE: syncflows must not import the exceptions app, so the model is
    # looked up by name. This count belongs in reporting once it has pages.
    case_model = apps.get_model("exceptions", "ExceptionCase")
    rows = (
        case_model.objects.filter(state__in=case_model.OPEN_STATES)
        .order_by()
        .values("reason_code")
        .annotate(n=Count("id"))
        .order_by("-n", "reason_code")
    )
    rows = [
        {
            "reason_code": row["reason_code"],
            "title": REASONS.get(row["reason_code"], (row["reason_code"], ""))[0],
            "count": row["n"],
        }
        for row in rows
    ]
    return {"total": sum(row["count"] for row in rows), "rows": rows}


def commands_per_day() -> dict:
    """Count commands created per day and state over the last CHART_DAYS days.

    Days are calendar days in the server's current time zone.
    """
    today = timezone.localdate()
    first_day = today - datetime.timedelta(days=CHART_DAYS - 1)
    rows = (
        Command.objects.filter(created_at__date__gte=first_day)
        .annotate(day=TruncDate("created_at"))
        .order_by()
        .values("day", "state")
        .annotate(n=Count("id"))
    )
    counts = {(row["day"], row["state"]): row["n"] for row in rows}
    days = [first_day + datetime.timedelta(days=i) for i in range(CHART_DAYS)]
    series = []
    for state, label in Command.State.choices:
        values = [counts.get((day, state), 0) for day in days]
        if any(values):
            series.append({"state": state, "label": label, "values": values})
    return {
        "days": [day.isoformat() for day in days],
        "series": series,
        "totals": [sum(s["values"][i] for s in series) for i in range(CHART_DAYS)],
    }
