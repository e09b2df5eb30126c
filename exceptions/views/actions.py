"""POST views for the actions on one exception case.

Each view calls the matching service, which checks the role and the case's
state. A refusal is shown with the messages framework. A missing role raises
PermissionDenied, which Django turns into a 403 response.
"""

import logging

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from exceptions.models import ExceptionCase
from exceptions.services import actions
from exceptions.views.forms import DismissForm, ResolveForm
from exceptions.views.pages import render_case

logger = logging.getLogger(__name__)


def run_action(request, case, perform, done: str):
    """Call ``perform(case)`` and redirect back to the case with a message."""
    try:
        perform(case)
    except actions.ActionRefused as refusal:
        logger.info("Action on case %s rejected: %s", case.pk, refusal.message)
        messages.error(request, refusal.message)
    else:
        messages.success(request, done)
    return redirect("exceptions:case-detail", pk=case.pk)


def get_case(pk) -> ExceptionCase:
    return get_object_or_404(ExceptionCase, pk=pk)


@require_POST
def retry(request, pk):
    case = get_case(pk)
    return run_action(
        request,
        case,
        lambda c: actions.retry_case(c, acting_user=request.user),
        f"Case {case.pk}: the command was queued to run again.",
    )


@require_POST
def replay(request, pk):
    case = get_case(pk)
    return run_action(
        request,
        case,
        lambda c: actions.replay_case(c, acting_user=request.user),
        f"Case {case.pk}: the record was replayed through the pipeline.",
    )


@require_POST
def acknowledge(request, pk):
    case = get_case(pk)
    return run_action(
        request,
        case,
        lambda c: actions.acknowledge_case(c, acting_user=request.user),
        f"Case {case.pk} is acknowledged.",
    )


@require_POST
def assign_to_me(request, pk):
    case = get_case(pk)
    return run_action(
        request,
        case,
        lambda c: actions.assign_case(c, acting_user=request.user, user=request.user),
        f"Case {case.pk} is assigned to you.",
    )


@require_POST
def resolve(request, pk):
    case = get_case(pk)
    form = ResolveForm(request.POST)
    if not form.is_valid():
        return render_case(request, pk, forms={"resolve": form}, status=400)
    note = form.cleaned_data["note"]
    return run_action(
        request,
        case,
        lambda c: actions.resolve_case(c, acting_user=request.user, note=note),
        f"Case {case.pk} is resolved.",
    )


@require_POST
def dismiss(request, pk):
    case = get_case(pk)
    form = DismissForm(request.POST)
    if not form.is_valid():
        return render_case(request, pk, forms={"dismiss": form}, status=400)
    reason = form.cleaned_data["reason"]
    return run_action(
        request,
        case,
        lambda c: actions.dismiss_case(c, acting_user=request.user, reason=reason),
        f"Case {case.pk} is dismissed.",
    )
