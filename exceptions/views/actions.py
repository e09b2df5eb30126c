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
from exceptions.services import actions, fixes
from exceptions.views.forms import (
    CompensateForm,
    CustomerFixForm,
    DismissForm,
    LookupFixForm,
    ResolveForm,
)
from exceptions.views.pages import render_case

logger = logging.getLogger(__name__)


def run_action(request, case, perform, done: str):
    """Call ``perform(case)`` and redirect back to the case with a message."""
    try:
        perform(case)
    except actions.ActionRefused as refusal:
        with case.log_context():
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


@require_POST
def assign(request, pk):
    from exceptions.views.pages import assign_form

    case = get_case(pk)
    form = assign_form(request.POST)
    if not form.is_valid():
        return render_case(request, pk, forms={"assign": form}, status=400)
    user, group = form.cleaned_data["user"], form.cleaned_data["group"]
    return run_action(
        request,
        case,
        lambda c: actions.assign_case(
            c, acting_user=request.user, user=user, group=group
        ),
        f"Case {case.pk} is assigned to {user or group}.",
    )


@require_POST
def compensate(request, pk):
    case = get_case(pk)
    form = CompensateForm(request.POST)
    if not form.is_valid():
        return render_case(request, pk, forms={"compensate": form}, status=400)
    note = form.cleaned_data["note"]
    return run_action(
        request,
        case,
        lambda c: actions.compensate_case(c, acting_user=request.user, note=note),
        f"Case {case.pk}: the ERP document was reversed. Replay to create a new one.",
    )


@require_POST
def fix_lookup(request, pk):
    case = get_case(pk)
    form = LookupFixForm(request.POST)
    if not form.is_valid():
        return render_case(request, pk, forms={"lookup": form}, status=400)
    key, value = form.cleaned_data["key"], form.cleaned_data["value"]
    return run_action(
        request,
        case,
        lambda c: fixes.add_lookup_row_and_retry(
            c, acting_user=request.user, key=key, value=value
        ),
        f"Case {case.pk}: {key} now maps to {value}, and the case was retried.",
    )


@require_POST
def fix_customer(request, pk):
    from syncflows.models import SandboxCustomer

    case = get_case(pk)
    form = CustomerFixForm(request.POST, customers=SandboxCustomer.objects.all())
    if not form.is_valid():
        return render_case(request, pk, forms={"customer": form}, status=400)
    name, link_to = form.cleaned_data["name"], form.cleaned_data["link_to"]
    return run_action(
        request,
        case,
        lambda c: fixes.add_customer_and_retry(
            c, acting_user=request.user, name=name, link_to=link_to
        ),
        f"Case {case.pk}: the customer is in the ERP now, and the case was retried.",
    )
