"""Reconciliation pages: runs, progress, and each run's report with drill-down."""

import datetime

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from meshline.roles import ADMIN, FINANCE, has_role
from reporting.forms import ReconciliationForm
from reporting.models import ReconciliationItem, ReconciliationRun
from reporting.services.reconciliation import start_run, totals
from reporting.tasks import enqueue_reconciliation
from reporting.views.tables import csv_response
from syncflows.views.lists import paginate, query_without_page, wants_partial

ITEM_COLUMNS = [
    "Outcome",
    "Record",
    "Document",
    "Invoice",
    "CRM amount",
    "CRM currency",
    "ERP amount",
    "ERP currency",
    "Case",
    "Message",
]


def can_reconcile(user) -> bool:
    return has_role(user, FINANCE, ADMIN)


@require_GET
def run_list(request):
    today = timezone.localdate()
    form = ReconciliationForm(
        initial={"start": today - datetime.timedelta(days=30), "end": today}
    )
    context = {
        "nav": "dashboards",
        "subnav": "reconciliation",
        "runs": ReconciliationRun.objects.select_related("requested_by")[:50],
        "form": form,
        "can_reconcile": can_reconcile(request.user),
    }
    return render(request, "reporting/reconciliation_list.html", context)


@require_POST
def run_start(request):
    if not can_reconcile(request.user):
        raise PermissionDenied(
            "Starting a reconciliation needs the Finance or Admin role."
        )
    form = ReconciliationForm(request.POST)
    if not form.is_valid():
        context = {
            "nav": "dashboards",
            "subnav": "reconciliation",
            "runs": ReconciliationRun.objects.all()[:50],
            "form": form,
            "can_reconcile": True,
        }
        return render(
            request, "reporting/reconciliation_list.html", context, status=400
        )
    tz = timezone.get_current_timezone()
    start = datetime.datetime.combine(form.cleaned_data["start"], datetime.time(), tz)
    end = datetime.datetime.combine(
        form.cleaned_data["end"] + datetime.timedelta(days=1), datetime.time(), tz
    )
    run = start_run(start, end, acting_user=request.user)
    enqueue_reconciliation(run.pk)
    messages.success(
        request, f"Reconciliation run {run.pk} started for {run.total} orders."
    )
    return redirect("reporting:reconciliation-detail", pk=run.pk)


@require_GET
def run_detail(request, pk):
    run = get_object_or_404(ReconciliationRun, pk=pk)
    if request.GET.get("progress"):
        return render(
            request, "reporting/partials/reconciliation_progress.html", {"run": run}
        )
    outcome = request.GET.get("outcome", "")
    items = run.items.select_related("command", "destination").order_by("id")
    if outcome in ReconciliationItem.Outcome.values:
        items = items.filter(outcome=outcome)
    if request.GET.get("format") == "csv":
        return csv_response(
            f"meshline-reconciliation-{run.pk}.csv", ITEM_COLUMNS, _item_rows(items)
        )
    context = {
        "nav": "dashboards",
        "subnav": "reconciliation",
        "run": run,
        "totals": totals(run),
        "outcome": outcome,
        "outcomes": ReconciliationItem.Outcome.choices,
        "page": paginate(request, items),
        "query": query_without_page(request),
    }
    template = "reporting/reconciliation_detail.html"
    if wants_partial(request):
        template = "reporting/partials/reconciliation_items.html"
    return render(request, template, context)


def _item_rows(items):
    for item in items.iterator(1000):
        yield [
            item.get_outcome_display(),
            item.record_key,
            item.document_number,
            item.invoice_number,
            item.crm_amount if item.crm_amount is not None else "",
            item.crm_currency,
            item.erp_amount if item.erp_amount is not None else "",
            item.erp_currency,
            item.case_id or "",
            item.message,
        ]
