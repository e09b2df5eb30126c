"""Read-only API endpoint for exception cases."""

from rest_framework import viewsets

from exceptions.api.serializers import ExceptionCaseSerializer
from exceptions.filters import ExceptionCaseFilter
from exceptions.models import ExceptionCase
from syncflows.api.views import VIEW_PERMISSIONS


class ExceptionCaseViewSet(viewsets.ReadOnlyModelViewSet):
    """Exception cases, soonest due first."""

    permission_classes = VIEW_PERMISSIONS
    queryset = ExceptionCase.objects.select_related(
        "lane", "owner_user", "owner_group", "brief", "destination"
    )
    serializer_class = ExceptionCaseSerializer
    filterset_class = ExceptionCaseFilter
