"""Pages of the exception queues: all cases, my work and one case."""

import json

from django.db.models import Q
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from exceptions.filters import ExceptionCaseFilter
from exceptions.models import ExceptionCase
from exceptions.views.forms import DismissForm, ResolveForm
from meshline import roles
from syncflows.views.lists import render_filtered_list

# The filters shown above the table. "More filters" folds away the rest.
PRIMARY_FILTERS = ("q", "state", "reason_code", "lane", "sla")


def case_queryset():
    return ExceptionCase.objects.select_related(
        "lane", "owner_user", "owner_group", "brief"
    ).defer("detail", "resolution_note")


@require_GET
def case_list(request):
    return render_filtered_list(
        request,
        filterset_class=ExceptionCaseFilter,
        queryset=case_queryset(),
        template="exceptions/case_list.html",
        partial="exceptions/partials/case_table.html",
        context={
            "nav": "exceptions",
            "now": timezone.now(),
            "primary_filters": PRIMARY_FILTERS,
        },
    )


@require_GET
def my_work(request):
    user = request.user
    mine = Q(owner_user=user) | Q(owner_group__in=user.groups.all())
    queryset = case_queryset().filter(mine, state__in=ExceptionCase.OPEN_STATES)
    return render_filtered_list(
        request,
        filterset_class=ExceptionCaseFilter,
        queryset=queryset,
        template="exceptions/my_work.html",
        partial="exceptions/partials/case_table.html",
        context={
            "nav": "mine",
            "now": timezone.now(),
            "empty_text": (
                "Nothing is waiting for you. Open cases owned by you or by one "
                "of your groups appear here."
            ),
            "primary_filters": PRIMARY_FILTERS,
        },
    )


@require_GET
def case_detail(request, pk):
    return render_case(request, pk)


def render_case(request, pk, *, forms=None, status=200):
    """Render the case page, with any bound ``forms`` that failed validation."""
    case = get_object_or_404(
        ExceptionCase.objects.select_related(
            "lane", "owner_user", "owner_group", "brief", "destination", "command"
        ),
        pk=pk,
    )
    forms = forms or {}
    context = {
        "nav": "exceptions",
        "case": case,
        "is_overdue": case.is_open and case.due_at < timezone.now(),
        "detail_rows": detail_rows(case.detail),
        "history": case.history.select_related("actor"),
        "allowed": allowed_actions(request.user, case),
        "resolve_form": forms.get("resolve") or ResolveForm(),
        "dismiss_form": forms.get("dismiss") or DismissForm(),
    }
    return render(request, "exceptions/case_detail.html", context, status=status)


def allowed_actions(user, case) -> dict[str, bool]:
    """Return the action buttons to show. The services check the same rules."""
    if not case.is_open:
        return {}
    triage = roles.can(user, "triage_case")
    has_work = case.command_id is not None or case.run_id is not None
    allowed = {
        "retry": roles.can(user, "retry_command") and has_work,
        "replay": roles.can(user, "replay_event") and has_work,
        "acknowledge": triage and case.state != ExceptionCase.State.ACKNOWLEDGED,
        "assign_to_me": triage and case.owner_user_id != user.pk,
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
