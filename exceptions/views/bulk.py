"""Bulk actions from a queue page: a count confirmation, then the progress bar."""

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from exceptions.models import BulkAction, ExceptionCase, Lane
from exceptions.services import actions
from exceptions.services.bulk import ROLE_FOR, start_bulk_action
from exceptions.views.queue import filtered_cases
from meshline import roles


def assignable_users():
    """Return the active users who may work on cases, for the assignee choices."""
    groups = roles.POLICY["triage_case"]
    users = get_user_model().objects.filter(is_active=True)
    return (
        users.filter(groups__name__in=groups)
        .distinct()
        .order_by("username")
        .only("pk", "username", "first_name", "last_name")
    )


def _selection(request):
    """Return the selected case ids and a description of where they came from."""
    if request.POST.get("selection") == "matching":
        scope = request.POST.get("scope", "all")
        lane = None
        if scope.startswith("lane:"):
            lane = get_object_or_404(Lane, slug=scope.split(":", 1)[1])
        params = QueryDict(request.POST.get("query", ""))
        filterset = filtered_cases(request, params, "lane" if lane else scope, lane)
        ids = list(filterset.qs.order_by().values_list("id", flat=True))
        return ids, "every case that matches the filters"
    ids = [int(pk) for pk in request.POST.getlist("case") if pk.isdigit()]
    return ids, "the selected cases"


@require_POST
def bulk_confirm(request):
    """Show how many cases the action would change; start it once confirmed."""
    action = request.POST.get("action", "")
    if action not in ROLE_FOR:
        messages.error(request, "Choose assign, retry or resolve for the bulk action.")
        return redirect(_safe_back(request.POST.get("back", "")))
    roles.require(request.user, ROLE_FOR[action])
    ids, source = _selection(request)
    params = {
        "user_id": request.POST.get("user_id", ""),
        "note": request.POST.get("note", ""),
    }
    back = _safe_back(request.POST.get("back", ""))
    if not ids:
        messages.error(
            request, "Select at least one case, or choose all matching cases."
        )
        return redirect(back)
    if request.POST.get("confirm") != "yes":
        context = {
            "nav": "exceptions",
            "action": action,
            "action_label": BulkAction.Action(action).label,
            "count": len(ids),
            "source": source,
            "post": request.POST,
            "ids": ids if request.POST.get("selection") != "matching" else [],
            "assignee": _assignee_name(params["user_id"]),
            "back": back,
        }
        return render(request, "exceptions/bulk_confirm.html", context)
    try:
        bulk = start_bulk_action(action, ids, acting_user=request.user, params=params)
    except actions.ActionRefused as refusal:
        messages.error(request, refusal.message)
        return redirect(back)
    return redirect("exceptions:bulk-progress", pk=bulk.pk)


def _safe_back(path: str) -> str:
    # Only a queue page of this site, never another host.
    return (
        path if path.startswith("/exceptions/") and "//" not in path else "/exceptions/"
    )


def _assignee_name(user_id) -> str:
    user = (
        get_user_model().objects.filter(pk=user_id).first()
        if str(user_id).isdigit()
        else None
    )
    return (user.get_full_name() or user.get_username()) if user else ""


@require_GET
def bulk_progress(request, pk):
    bulk = get_object_or_404(BulkAction.objects.select_related("requested_by"), pk=pk)
    if bulk.requested_by_id != request.user.pk:
        roles.require(request.user, "edit_configuration")
    context = {
        "nav": "exceptions",
        "bulk": bulk,
        "open_states": ExceptionCase.OPEN_STATES,
    }
    template = (
        "exceptions/partials/bulk_progress.html"
        if request.htmx
        else "exceptions/bulk_progress.html"
    )
    return render(request, template, context)
