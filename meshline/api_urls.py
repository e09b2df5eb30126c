"""URLs of the JSON API, included at ``api/v1/``.

``inbound/<slug>/`` is left free for the CRM delivery endpoint, which is
routed separately.
"""

from django.urls import path
from drf_spectacular.renderers import (
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
)
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.routers import SimpleRouter

from exceptions.api.views import ExceptionCaseViewSet
from reporting.api.views import kpis
from syncflows.api.views import (
    CommandViewSet,
    DeliveryViewSet,
    InboundEventViewSet,
    TraceDetailView,
    TraceSearchView,
)

# JSON comes first so that a client without an Accept header, and every error
# body, gets JSON. ``?format=yaml`` still returns YAML.
SCHEMA_RENDERERS = [
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
]

router = SimpleRouter()
router.register("deliveries", DeliveryViewSet, basename="delivery")
router.register("events", InboundEventViewSet, basename="inbound-event")
router.register("commands", CommandViewSet, basename="command")
router.register("cases", ExceptionCaseViewSet, basename="exception-case")

urlpatterns = [
    path("kpis/", kpis, name="kpis"),
    path("trace/", TraceSearchView.as_view(), name="trace-search"),
    path("trace/<path:record_key>/", TraceDetailView.as_view(), name="trace-detail"),
    path(
        "schema/",
        SpectacularAPIView.as_view(
            permission_classes=[IsAuthenticated], renderer_classes=SCHEMA_RENDERERS
        ),
        name="schema",
    ),
    *router.urls,
]
