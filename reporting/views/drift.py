"""The drift report: what changed in the CRM's fields, and which briefs it holds."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from meshline.roles import ADMIN, SALES_OPS, can, has_role
from reporting.models import DeclaredSchema, DriftFinding, ObservedField
from reporting.services.drift import describe, release_brief, review_finding
from reporting.views.tables import csv_response
from syncflows.models import Brief, Command

FINDING_COLUMNS = [
    "Source",
    "Change",
    "Field",
    "New name",
    "Declared type",
    "Observed type",
    "Blocking",
    "Briefs",
    "State",
    "Detected",
]


@require_GET
def drift_report(request):
    findings = list(
        DriftFinding.objects.select_related("connector", "reviewed_by")
        .prefetch_related("briefs")
        .order_by("state", "-detected_at")[:200]
    )
    if request.GET.get("format") == "csv":
        return csv_response(
            "meshline-drift.csv", FINDING_COLUMNS, _finding_rows(findings)
        )
    context = {
        "nav": "dashboards",
        "subnav": "drift",
        "findings": [(finding, describe(finding)) for finding in findings],
        "schemas": _schema_diffs(),
        "held": _held_by_brief(),
        "can_review": has_role(request.user, SALES_OPS, ADMIN),
        "can_release": can(request.user, "retry_command"),
    }
    return render(request, "reporting/drift.html", context)


def _finding_rows(findings):
    for finding in findings:
        yield [
            f"{finding.connector.slug}:{finding.object_type}",
            finding.get_kind_display(),
            finding.field_name,
            finding.new_name,
            finding.declared_type,
            finding.observed_type,
            "yes" if finding.blocking else "no",
            " ".join(brief.slug for brief in finding.briefs.all()),
            finding.get_state_display(),
            finding.detected_at.isoformat(),
        ]


def _schema_diffs() -> list[dict]:
    """Pair each declared schema with the fields observed for it, field by field."""
    observed = {}
    for row in ObservedField.objects.values(
        "connector_id", "object_type", "name", "json_type", "last_seen"
    ).order_by("name", "json_type"):
        key = (row["connector_id"], row["object_type"])
        observed.setdefault(key, {}).setdefault(row["name"], []).append(row)
    diffs = []
    for schema in DeclaredSchema.objects.select_related("connector"):
        seen = observed.get((schema.connector_id, schema.object_type), {})
        names = sorted(set(schema.fields) | set(seen))
        lines = [
            _diff_line(name, schema.fields.get(name), seen.get(name)) for name in names
        ]
        diffs.append({"schema": schema, "lines": lines})
    return diffs


def _diff_line(name, declared, seen) -> dict:
    observed_types = sorted({row["json_type"] for row in seen or []} - {"null"})
    declared_type = (declared or {}).get("type", "")
    if declared is None:
        mark, label = "+", "only in deliveries"
    elif not seen:
        mark, label = "−", "declared, never delivered"
    elif declared_type and observed_types and declared_type not in observed_types:
        mark, label = "~", "type differs"
    else:
        mark, label = " ", "same"
    return {
        "mark": mark,
        "label": label,
        "name": name,
        "declared": declared_type,
        "required": bool((declared or {}).get("required")),
        "observed": ", ".join(observed_types),
    }


def _held_by_brief() -> list[dict]:
    rows = (
        Command.objects.filter(state=Command.State.HELD, reason_code="drift_blocked")
        .order_by()
        .values("brief_version__brief_id")
        .annotate(n=Count("id"))
    )
    counts = {row["brief_version__brief_id"]: row["n"] for row in rows}
    briefs = Brief.objects.filter(pk__in=counts).order_by("name")
    return [{"brief": brief, "count": counts[brief.pk]} for brief in briefs]


@require_POST
def finding_review(request, pk):
    finding = get_object_or_404(DriftFinding, pk=pk)
    review_finding(
        finding, acting_user=request.user, note=request.POST.get("note", "")[:2000]
    )
    messages.success(
        request, f"Drift finding {finding.pk} reviewed: {describe(finding)}."
    )
    return redirect("reporting:drift")


@require_POST
def brief_release(request, pk):
    brief = get_object_or_404(Brief, pk=pk)
    if not can(request.user, "retry_command"):
        raise PermissionDenied(
            "Releasing held commands needs the Finance, Triage Lead or Admin role."
        )
    try:
        released = release_brief(brief.pk, acting_user=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect("reporting:drift")
    messages.success(request, f"Released {released} held command(s) of {brief.name}.")
    return redirect("reporting:drift")
