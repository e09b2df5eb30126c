"""The dashboard page: KPIs over time, as charts and tables, and as CSV."""

from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from reporting.forms import KpiFilterForm
from reporting.services.kpis import compute
from reporting.views.tables import all_tables, csv_response
from syncflows.views.lists import wants_partial


@require_GET
def dashboard(request):
    form = KpiFilterForm(request.GET or None)
    if request.GET and not form.is_valid():
        return render(
            request,
            "reporting/dashboard.html",
            {"nav": "dashboards", "subnav": "kpis", "form": form, "result": None},
            status=400,
        )
    if not request.GET:
        form = KpiFilterForm({})
        form.is_valid()
    filters = form.filters()
    form = _shown_form(form)
    result = compute(filters)
    tables = all_tables(result)
    wanted = request.GET.get("table")
    if request.GET.get("format") == "csv":
        return _table_csv(tables, wanted)
    context = {
        "nav": "dashboards",
        "subnav": "kpis",
        "form": form,
        "result": result,
        "tables": tables,
        "query": request.GET.urlencode(),
    }
    template = "reporting/dashboard.html"
    if wants_partial(request):
        template = "reporting/partials/dashboard_results.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _table_csv(tables, wanted):
    chosen = next((t for t in tables if t["key"] == wanted), None)
    if chosen is None:
        columns = ["KPI", *tables[0]["columns"]] if tables else []
        rows = [
            [t["key"], *row]
            for t in tables
            if t["columns"] == tables[0]["columns"]
            for row in t["rows"]
        ]
        return csv_response("meshline-kpis.csv", columns, rows)
    return csv_response(
        f"meshline-{chosen['key']}.csv", chosen["columns"], chosen["rows"]
    )


def _shown_form(form) -> KpiFilterForm:
    """Return a form whose inputs show the range and time zone in effect."""
    data = form.data.copy() if hasattr(form.data, "copy") else dict(form.data)
    cleaned = form.cleaned_data
    data["start"] = cleaned["start"].isoformat()
    data["end"] = cleaned["end"].isoformat()
    data["tz"] = cleaned["tz"].key
    shown = KpiFilterForm(data)
    shown.is_valid()
    return shown
