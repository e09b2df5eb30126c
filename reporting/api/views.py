"""The KPIs as JSON, with the dashboard's filters as query parameters."""

from rest_framework.decorators import api_view
from rest_framework.response import Response

from reporting.forms import KpiFilterForm
from reporting.services.kpis import compute


@api_view(["GET"])
def kpis(request):
    form = KpiFilterForm(request.query_params or {})
    if not form.is_valid():
        return Response({"errors": form.errors.get_json_data()}, status=400)
    return Response(compute(form.filters()))
