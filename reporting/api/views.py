"""The KPIs as JSON, with the dashboard's filters as query parameters."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from reporting.forms import KpiFilterForm
from reporting.services.kpis import compute

_DATE = OpenApiTypes.DATE
_TEXT = OpenApiTypes.STR


@extend_schema(
    summary="KPIs over a time range",
    parameters=[
        OpenApiParameter("start", _DATE, description="First day of the range (ISO date)."),
        OpenApiParameter("end", _DATE, description="Last day of the range (ISO date)."),
        OpenApiParameter("bucket", _TEXT, description="Time bucket: day, week or month."),
        OpenApiParameter("segment", _TEXT, description="Split by keyword, business unit or destination."),
        OpenApiParameter("keyword", _TEXT, description="Only syncs of briefs with this keyword."),
        OpenApiParameter("business_unit", _TEXT, description="Only this business unit."),
        OpenApiParameter("destination", _TEXT, description="Only this destination (slug)."),
        OpenApiParameter("pilot", _DATE, description="Compare before and after this day."),
        OpenApiParameter("tz", _TEXT, description="IANA time zone of the buckets, e.g. Europe/Helsinki."),
    ],
    responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT},
)
@api_view(["GET"])
def kpis(request):
    form = KpiFilterForm(request.query_params or {})
    if not form.is_valid():
        return Response(
            {
                "message": "The KPI filters are invalid; correct the fields listed in errors.",
                "code": "invalid",
                "errors": form.errors.get_json_data(),
            },
            status=400,
        )
    return Response(compute(form.filters()))
