"""The queue pages: all cases, one lane, my work, their counts and CSV export.

Every list is built by ``filtered_cases`` from the same FilterSet as the API,
so a CSV export or a bulk action on "all matching" sees exactly the cases the
page shows.
"""

import csv

from django.db.models import Count, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from exceptions.filters import ExceptionCaseFilter
from exceptions.models import ExceptionCase, Lane
from meshline import roles
from syncflows.views.lists import label_range_inputs, paginate, render_list

# The filters shown above the table. "More filters" folds away the rest.
PRIMARY_FILTERS = ("q", "state", "reason_code", "lane", "sla", "owner")
SORTABLE = [
    ("id", "Case"),
    ("reason_code", "What failed"),
    ("lane", "Lane"),
    ("state", "State"),
    ("opened_at", "Opened"),
    ("due_at", "SLA"),
]
CSV_COLUMNS = [
    ("id", "case"),
    ("state", "state"),
    ("reason_code", "reason_code"),
    ("title", "title"),
    ("lane__slug", "lane"),
    ("owner_user__username", "owner_user"),
    ("owner_group__name", "owner_group"),
    ("keyword", "keyword"),
    ("business_unit", "business_unit"),
    ("destination__slug", "destination"),
    ("record_key", "record_key"),
    ("command__erp_document_number", "erp_document_number"),
    ("opened_at", "opened_at"),
    ("due_at", "due_at"),
    ("escalation_level", "escalation_level"),
]


def case_queryset():
    return ExceptionCase.objects.select_related(
        "lane", "owner_user", "owner_group", "brief"
    ).defer("detail", "resolution_note", "message", "suggested_fix")


def scoped_cases(user, scope: str, lane=None):
    cases = case_queryset()
    if scope == "mine":
        mine = Q(owner_user=user) | Q(owner_group__in=user.groups.all())
        cases = cases.filter(mine, state__in=ExceptionCase.OPEN_STATES)
    elif scope == "lane":
        cases = cases.filter(lane=lane)
    return cases


def filtered_cases(request, params, scope: str, lane=None) -> ExceptionCaseFilter:
    """Build the FilterSet of one queue; lane pages show open cases by default."""
    data = params.copy()
    if scope == "lane" and "state" not in data:
        data["state"] = "open"
    filterset = ExceptionCaseFilter(
        data or None, queryset=scoped_cases(request.user, scope, lane), request=request
    )
    if lane is not None:
        filterset.form.fields.pop("lane", None)
    return filterset


def lane_counts(now=None):
    """Return every lane with its open and breached case counts, in one query.

    Each count is a subquery over the lane's open cases, which the partial
    index ``case_open_by_lane`` serves, so closed cases are never read.
    """
    now = now or timezone.now()
    open_cases = ExceptionCase.objects.filter(
        lane=OuterRef("pk"), state__in=ExceptionCase.OPEN_STATES
    )
    return Lane.objects.only("slug", "name").annotate(
        open_count=_count(open_cases),
        breached_count=_count(open_cases.filter(due_at__lt=now)),
    )


def _count(cases):
    counted = (
        cases.order_by().values("lane").annotate(total=Count("id")).values("total")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def sort_links(request) -> list[dict]:
    current = request.GET.get("ordering", "")
    links = []
    for field, label in SORTABLE:
        params = request.GET.copy()
        params.pop("page", None)
        descending = current == field
        params["ordering"] = f"-{field}" if descending else field
        state = (
            "ascending"
            if current == field
            else ("descending" if current == f"-{field}" else "none")
        )
        links.append({"label": label, "query": params.urlencode(), "sort": state})
    return links


def render_queue(request, *, scope: str, lane=None, title: str, lead: str, nav: str):
    roles.require(request.user, "view")
    filterset = filtered_cases(request, request.GET, scope, lane)
    label_range_inputs(filterset.form)
    page = paginate(request, filterset.qs)
    now = timezone.now()
    params = request.GET.copy()
    params.pop("page", None)
    context = {
        "nav": nav,
        "title": title,
        "lead": lead,
        "scope": scope,
        "lane": lane,
        "filter": filterset,
        "page": page,
        "now": now,
        # The counts arrive through the "counts" endpoint, so that counting
        # every open case never slows the queue page down.
        "lanes": Lane.objects.only("slug", "name"),
        "sort_links": sort_links(request),
        "query": params.urlencode(),
        "primary_filters": PRIMARY_FILTERS,
        "can_bulk": roles.can(request.user, "triage_case"),
        "empty_text": (
            "Nothing is waiting for you. Open cases owned by you or by one of your "
            "groups appear here."
            if scope == "mine"
            else "No cases match these filters."
        ),
    }
    if context["can_bulk"]:
        from exceptions.views.bulk import assignable_users

        context["assignees"] = assignable_users()
    return render_list(
        request,
        template="exceptions/queue.html",
        partial="exceptions/partials/case_table.html",
        context=context,
    )


@require_GET
def case_list(request):
    return render_queue(
        request,
        scope="all",
        title="Exceptions",
        lead="Every case the pipeline opened, the soonest due first.",
        nav="exceptions",
    )


@require_GET
def lane_queue(request, slug):
    lane = get_object_or_404(Lane.objects.select_related("owner_group"), slug=slug)
    hours = "business hours" if lane.business_hours else "hours"
    return render_queue(
        request,
        scope="lane",
        lane=lane,
        title=f"{lane.name} lane",
        lead=(
            f"{lane.description} Owned by {lane.owner_group.name}; default SLA "
            f"{lane.sla_hours} {hours}. Open cases unless you choose a state."
        ).strip(),
        nav="exceptions",
    )


@require_GET
def my_work(request):
    return render_queue(
        request,
        scope="mine",
        title="My work",
        lead="Open cases owned by you or by one of your groups, the soonest due first.",
        nav="mine",
    )


@require_GET
def counts(request):
    """Return the lane counts alone, polled by the queue pages."""
    roles.require(request.user, "view")
    context = {
        "lanes": lane_counts(),
        "counted": True,
        "current_lane": request.GET.get("lane", ""),
        "nav": request.GET.get("nav", ""),
    }
    return render(request, "exceptions/partials/lane_counts.html", context)


class _Echo:
    def write(self, value):
        return value


def csv_cell(value) -> str:
    text = (
        ""
        if value is None
        else (value.isoformat() if hasattr(value, "isoformat") else str(value))
    )
    # A leading =, +, - or @ would run as a formula in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


@require_GET
def export_csv(request):
    """Stream the cases of any filtered queue as CSV, with the same filters."""
    roles.require(request.user, "view")
    scope = request.GET.get("scope", "all")
    lane = None
    if scope.startswith("lane:"):
        lane = get_object_or_404(Lane, slug=scope.split(":", 1)[1])
        scope = "lane"
    elif scope not in ("all", "mine"):
        scope = "all"
    filterset = filtered_cases(request, request.GET, scope, lane)
    rows = filterset.qs.values_list(*(name for name, _ in CSV_COLUMNS))
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow([header for _, header in CSV_COLUMNS])
        for row in rows.iterator(chunk_size=2000):
            yield writer.writerow([csv_cell(value) for value in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="exception-cases.csv"'
    return response
