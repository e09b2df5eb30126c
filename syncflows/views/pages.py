"""Pages of the pipeline: deliveries, inbound events and commands."""

import json
import logging

from django.contrib import messages
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from meshline import roles
from syncflows.filters import CommandFilter, DeliveryFilter, InboundEventFilter
from syncflows.models import Command, Delivery, InboundEvent, LedgerEntry
from syncflows.services.errors import ActionRefused
from syncflows.services.receive import replay_delivery
from syncflows.views.lists import render_filtered_list

logger = logging.getLogger(__name__)

# The views above the deliveries table: name, label and the status they show.
DELIVERY_VIEWS = [
    ("", "All deliveries", None),
    ("quarantined", "Quarantined", Delivery.Status.QUARANTINED),
    ("rejected", "Rejected", Delivery.Status.REJECTED),
]
REPLAYABLE_STATUSES = {Delivery.Status.QUARANTINED, Delivery.Status.REJECTED}
# Pages never show connector secrets, so they are not loaded or decrypted.
CONNECTOR_SECRETS = ("connector__secrets",)
# Roles that may read a delivery's raw body, which contains personal data.
RAW_BODY_ROLES = (roles.ADMIN, roles.TRIAGE_LEAD)


def pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


@require_GET
def home(request):
    return redirect("exceptions:my-work")


@require_GET
def delivery_list(request):
    view_names = {name: status for name, _label, status in DELIVERY_VIEWS}
    view = request.GET.get("view", "")
    if view not in view_names:
        view = ""

    queryset = (
        Delivery.objects.select_related("connector")
        .defer("body", "headers", *CONNECTOR_SECRETS)
        .annotate(event_count=Count("events"))
        # Meta.ordering does not apply to a GROUP BY query; order it here.
        .order_by("-received_at", "-id")
    )
    if view_names[view]:
        queryset = queryset.filter(status=view_names[view])

    return render_filtered_list(
        request,
        filterset_class=DeliveryFilter,
        queryset=queryset,
        template="syncflows/delivery_list.html",
        partial="syncflows/partials/delivery_table.html",
        context={
            "nav": "pipeline",
            "subnav": "deliveries",
            "views": [(name, label) for name, label, _status in DELIVERY_VIEWS],
            "view": view,
            "hidden": {"view": view} if view else {},
            "can_replay": roles.can(request.user, "replay_event"),
            "replayable": REPLAYABLE_STATUSES,
        },
    )


@require_GET
def delivery_detail(request, pk):
    delivery = get_object_or_404(
        Delivery.objects.select_related("connector", "replay_of").defer(
            *CONNECTOR_SECRETS
        ),
        pk=pk,
    )
    events = (
        delivery.events.select_related("connector")
        .defer("payload", *CONNECTOR_SECRETS)
        .order_by("position")
    )
    show_body = roles.has_role(request.user, *RAW_BODY_ROLES)
    context = {
        "nav": "pipeline",
        "subnav": "deliveries",
        "delivery": delivery,
        "events": events,
        "replays": delivery.replays.only("id", "status", "received_at"),
        "headers": sorted(delivery.headers.items()),
        "show_body": show_body,
        "body": raw_body_text(delivery) if show_body else None,
        "can_replay": roles.can(request.user, "replay_event")
        and delivery.status in REPLAYABLE_STATUSES,
    }
    return render(request, "syncflows/delivery_detail.html", context)


def raw_body_text(delivery) -> str:
    """Return the body as text, indented when it is JSON."""
    text = bytes(delivery.body).decode("utf-8", errors="replace")
    try:
        return pretty_json(json.loads(text))
    except ValueError:
        return text


@require_POST
def delivery_replay(request, pk):
    delivery = get_object_or_404(Delivery.objects.select_related("connector"), pk=pk)
    try:
        replay_delivery(delivery, acting_user=request.user)
    except ActionRefused as refusal:
        logger.info("Replay of delivery %s rejected: %s", delivery.pk, refusal.message)
        messages.error(request, refusal.message)
    else:
        messages.success(
            request, f"Delivery {delivery.pk} was replayed as a new delivery."
        )
    return redirect(safe_next(request, reverse("syncflows:delivery-detail", args=[pk])))


def safe_next(request, default: str) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


@require_GET
def event_list(request):
    queryset = InboundEvent.objects.select_related("connector").defer(
        "payload", *CONNECTOR_SECRETS
    )
    return render_filtered_list(
        request,
        filterset_class=InboundEventFilter,
        queryset=queryset,
        template="syncflows/event_list.html",
        partial="syncflows/partials/event_table.html",
        context={"nav": "pipeline", "subnav": "events"},
    )


@require_GET
def command_list(request):
    queryset = Command.objects.select_related(
        "brief_version__brief", "record", "destination"
    ).defer("payload", "result", "record__state", "record__field_versions")
    return render_filtered_list(
        request,
        filterset_class=CommandFilter,
        queryset=queryset,
        template="syncflows/command_list.html",
        partial="syncflows/partials/command_table.html",
        context={"nav": "pipeline", "subnav": "commands"},
    )


@require_GET
def command_detail(request, pk):
    command = get_object_or_404(
        Command.objects.select_related("brief_version__brief", "record", "destination"),
        pk=pk,
    )
    entries = LedgerEntry.objects.filter(command=command).select_related("actor")
    entries = list(entries)
    case_ids = sorted({entry.case_id for entry in entries if entry.case_id})
    context = {
        "nav": "pipeline",
        "subnav": "commands",
        "command": command,
        "payload": pretty_json(command.payload),
        "result": pretty_json(command.result) if command.result is not None else "",
        "entries": entries,
        "case_ids": case_ids,
    }
    return render(request, "syncflows/command_detail.html", context)
