"""Read-only API endpoints for deliveries, inbound events, commands and traces.

Lists are filtered by the same FilterSets as the console's pages and paginated
with ``limit`` and ``offset``.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, viewsets
from rest_framework.exceptions import APIException, NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from meshline.authentication import policy_permission
from meshline.roles import POLICY, can
from syncflows.api import serializers
from syncflows.filters import CommandFilter, DeliveryFilter, InboundEventFilter
from syncflows.models import Command, Delivery, InboundEvent
from syncflows.services.trace import build_trace, find_record_keys

# The search endpoint returns full traces for this many record keys, and lists
# the rest by key only.
MAX_TRACES = 5


class CanView(permissions.BasePermission):
    """Allow users whose role may view Meshline data."""

    message = (
        "Viewing Meshline data needs one of these roles: "
        f"{', '.join(sorted(POLICY['view']))}."
    )

    def has_permission(self, request, view):
        return can(request.user, "view")


VIEW_PERMISSIONS = [permissions.IsAuthenticated, CanView, policy_permission("view")]


class InvalidQuery(APIException):
    status_code = 400
    default_code = "invalid"
    default_detail = "The request is invalid."


class DetailSerializerMixin:
    """Serializer and queryset choice that keeps large JSON columns out of lists.

    A single object uses ``detail_serializer_class``. A list uses the lighter
    ``serializer_class`` and defers the ``list_deferred`` columns."""

    detail_serializer_class = None
    list_deferred = ()

    def get_serializer_class(self):
        if self.action == "retrieve" and self.detail_serializer_class:
            return self.detail_serializer_class
        return super().get_serializer_class()

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "list" and self.list_deferred:
            queryset = queryset.defer(*self.list_deferred)
        return queryset


class DeliveryViewSet(viewsets.ReadOnlyModelViewSet):
    """Deliveries as they arrived from the CRM, newest first, without bodies."""

    permission_classes = VIEW_PERMISSIONS
    queryset = Delivery.objects.select_related("connector").defer(
        "body", "headers", "request_url"
    )
    serializer_class = serializers.DeliverySerializer
    filterset_class = DeliveryFilter


class InboundEventViewSet(DetailSerializerMixin, viewsets.ReadOnlyModelViewSet):
    """CRM events taken from deliveries, newest first."""

    permission_classes = VIEW_PERMISSIONS
    queryset = InboundEvent.objects.select_related("connector")
    serializer_class = serializers.InboundEventSerializer
    detail_serializer_class = serializers.InboundEventDetailSerializer
    list_deferred = ("payload",)
    filterset_class = InboundEventFilter


class CommandViewSet(DetailSerializerMixin, viewsets.ReadOnlyModelViewSet):
    """ERP commands in the outbox, newest first."""

    permission_classes = VIEW_PERMISSIONS
    queryset = Command.objects.select_related(
        "destination", "record", "brief_version__brief"
    ).defer("record__state", "record__field_versions")
    serializer_class = serializers.CommandSerializer
    detail_serializer_class = serializers.CommandDetailSerializer
    list_deferred = ("payload", "result")
    filterset_class = CommandFilter


class TraceSearchView(APIView):
    permission_classes = VIEW_PERMISSIONS

    @extend_schema(
        operation_id="trace_search",
        summary="Find CRM records and trace them",
        description=(
            "Find the records that a CRM record id, alias id, record key, ERP "
            "document number or reference, or idempotency key names. Returns "
            "every matching record key (at most 50) and the full trace of the "
            "first 5. No match returns empty lists."
        ),
        parameters=[
            OpenApiParameter(
                "q",
                OpenApiTypes.STR,
                required=True,
                description="The id, key or number to look up.",
            )
        ],
        responses=serializers.TraceSearchSerializer,
    )
    def get(self, request):
        query = request.query_params.get("q", "").strip()
        if not query:
            raise InvalidQuery(
                "The q parameter is missing: pass a CRM record id, record key, "
                "ERP document number or idempotency key, for example ?q=900000001."
            )
        record_keys = find_record_keys(query)
        traces = [build_trace(key) for key in record_keys[:MAX_TRACES]]
        return Response({"record_keys": record_keys, "traces": traces})


class TraceDetailView(APIView):
    permission_classes = VIEW_PERMISSIONS

    @extend_schema(
        operation_id="trace_record",
        summary="Trace one CRM record",
        description=(
            "The source record, every ledger entry (oldest first), the commands "
            "and the exception cases of one record key such as "
            "hubspot:deal:900000001."
        ),
        responses=serializers.TraceSerializer,
    )
    def get(self, request, record_key):
        trace = build_trace(record_key)
        if not any(trace[part] for part in ("record", "entries", "commands", "cases")):
            raise NotFound(
                f"No record, ledger entry, command or case has the record key "
                f"{record_key!r}. Search with /api/v1/trace/?q= to find the key."
            )
        return Response(trace)
