"""The connector health page: deliveries, CRM reads, rate limits and tokens."""

from django.db.models import Max
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from syncflows.models import Connector, ConnectorApiAccess, ConnectorHealth, Delivery

# Recent errors shown per connector; the health row keeps more.
ERRORS_SHOWN = 5


@require_GET
def connector_health(request):
    # Connector secrets and API credentials are never loaded on this page.
    connectors = list(Connector.objects.defer("secrets").order_by("slug"))
    last_delivery = dict(
        Delivery.objects.order_by()
        .values("connector_id")
        .annotate(last=Max("received_at"))
        .values_list("connector_id", "last")
    )
    health = {row.connector_id: row for row in ConnectorHealth.objects.all()}
    access = {
        row.connector_id: row
        for row in ConnectorApiAccess.objects.only(
            "connector_id",
            "crm",
            "auth_type",
            "token_expires_at",
            "requests_per_second",
            "is_active",
        )
    }
    now = timezone.now()
    rows = [
        _row(
            connector,
            last_delivery.get(connector.pk),
            health.get(connector.pk),
            access.get(connector.pk),
            now,
        )
        for connector in connectors
    ]
    return render(
        request,
        "syncflows/connector_health.html",
        {"nav": "pipeline", "subnav": "health", "rows": rows},
    )


def _row(connector, last_delivery_at, health, access, now) -> dict:
    rate_limited = bool(
        health and health.rate_limited_until and health.rate_limited_until > now
    )
    token_expired = bool(
        access and access.token_expires_at and access.token_expires_at <= now
    )
    return {
        "connector": connector,
        "last_delivery_at": last_delivery_at,
        "health": health,
        "access": access,
        "rate_limited": rate_limited,
        "token_expired": token_expired,
        "auth_failed": bool(health and health.auth_failed_at),
        "errors": (health.recent_errors or [])[:ERRORS_SHOWN] if health else [],
    }
