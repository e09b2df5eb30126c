"""The case page: what failed, the suggested fix, the steps, the history and
the actions the user's roles allow."""

import json

from django.contrib.auth.models import Group
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from exceptions import sla
from exceptions.models import ExceptionCase
from exceptions.services.actions import compensated_command_id
from exceptions.services.fixes import fix_for
from exceptions.views.bulk import assignable_users
from exceptions.views.forms import (
    AssignForm,
    CompensateForm,
    CustomerFixForm,
    DismissForm,
    LookupFixForm,
    ResolveForm,
)
from meshline import roles
from syncflows.models import LedgerEntry

MAX_STEPS = 200


@require_GET
def case_detail(request, pk):
    return render_case(request, pk)


def render_case(request, pk, *, forms=None, status=200):
    """Render the case page, with any bound ``forms`` that failed validation."""
    roles.require(request.user, "view")
    case = get_object_or_404(
        ExceptionCase.objects.select_related(
            "lane", "owner_user", "owner_group", "brief", "destination", "command"
        ),
        pk=pk,
    )
    forms = forms or {}
    now = timezone.now()
    fix = fix_for(case) if case.is_open else None
    context = {
        "nav": "exceptions",
        "case": case,
        "now": now,
        "is_overdue": case.is_open and case.due_at < now,
        "time_left": sla.format_time_left(case.due_at, now),
        "detail_rows": detail_rows(case.detail),
        "history": case.history.select_related("actor"),
        "steps": step_rows(case),
        "allowed": allowed_actions(request.user, case, fix),
        "fix": fix,
        "next_case": next_case(case),
        **action_forms(case, fix, forms),
    }
    return render(request, "exceptions/case_detail.html", context, status=status)


def assign_form(data=None) -> AssignForm:
    return AssignForm(
        data,
        users=assignable_users(),
        groups=Group.objects.filter(name__in=roles.POLICY["triage_case"]).order_by(
            "name"
        ),
    )


def action_forms(case, fix, bound) -> dict:
    lookup_initial = (
        {"key": fix["key"], "value": fix["current_value"] or ""}
        if fix and fix["kind"] == "lookup"
        else None
    )
    customer_form = None
    if fix and fix["kind"] == "customer":
        customer_form = bound.get("customer") or CustomerFixForm(
            initial={"name": fix["name"]},
            customers=fix["destination"].sandbox_customers.order_by("name"),
        )
    return {
        "resolve_form": bound.get("resolve") or ResolveForm(),
        "dismiss_form": bound.get("dismiss") or DismissForm(),
        "assign_form": bound.get("assign") or assign_form(),
        "compensate_form": bound.get("compensate") or CompensateForm(),
        "lookup_form": bound.get("lookup") or LookupFixForm(initial=lookup_initial),
        "customer_form": customer_form,
    }


def step_rows(case) -> list[dict]:
    """Return the ledger steps of the case's record, with payloads as JSON text."""
    entries = (
        LedgerEntry.objects.filter(record_key=case.record_key)
        .select_related("actor")
        .order_by("id")[:MAX_STEPS]
    )
    return [
        {
            "entry": entry,
            "before": pretty(entry.payload_before),
            "after": pretty(entry.payload_after),
        }
        for entry in entries
    ]


def pretty(value) -> str:
    if value is None:
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def next_case(case):
    """Return the next open case of the lane by due time, for the "next" move."""
    later = ExceptionCase.objects.filter(
        lane_id=case.lane_id, state__in=ExceptionCase.OPEN_STATES
    ).exclude(pk=case.pk)
    after = later.filter(due_at__gt=case.due_at) | later.filter(
        due_at=case.due_at, pk__gt=case.pk
    )
    return (
        after.order_by("due_at", "id").only("pk").first()
        or later.order_by("due_at", "id").only("pk").first()
    )


def allowed_actions(user, case, fix=None) -> dict[str, bool]:
    """Return the action buttons to show. The services check the same rules."""
    if not case.is_open:
        return {}
    triage = roles.can(user, "triage_case")
    retry = roles.can(user, "retry_command")
    has_work = case.command_id is not None or case.run_id is not None
    allowed = {
        "retry": retry and has_work,
        "replay": roles.can(user, "replay_event") and has_work,
        "acknowledge": triage and case.state != ExceptionCase.State.ACKNOWLEDGED,
        "assign_to_me": triage and case.owner_user_id != user.pk,
        "assign": triage,
        "compensate": retry and compensated_command_id(case) is not None,
        "fix": roles.can(user, "fix_case")
        and fix is not None
        and fix["kind"] in ("lookup", "customer"),
        "resolve": triage,
        "dismiss": triage,
    }
    return {action: True for action, ok in allowed.items() if ok}


def detail_rows(detail, prefix: str = "") -> list[tuple[str, str, bool]]:
    """Flatten the case detail into (label, value, is_json) table rows.

    Nested objects become dotted labels. Lists of plain values are joined, and
    anything else is shown as indented JSON, for which ``is_json`` is True.
    """
    if not isinstance(detail, dict):
        return [(prefix or "Detail", *format_value(detail))] if detail else []
    rows = []
    for key in sorted(detail):
        label = f"{prefix}.{key}" if prefix else str(key)
        value = detail[key]
        if isinstance(value, dict) and value:
            rows.extend(detail_rows(value, label))
        else:
            rows.append((label, *format_value(value)))
    return rows


def format_value(value) -> tuple[str, bool]:
    """Return the text of one detail value and whether it is indented JSON."""
    if value is None:
        return "—", False
    if isinstance(value, str | int | float | bool):
        return str(value), False
    if isinstance(value, list) and all(
        isinstance(item, str | int | float) for item in value
    ):
        return ", ".join(str(item) for item in value) or "—", False
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return text, True
