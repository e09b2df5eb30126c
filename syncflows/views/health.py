"""The connector health page: deliveries, CRM reads, rate limits and tokens."""

from django.db.models import Max
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from syncflows.crm import pacing
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
    # The shared pacer's blocks include those of reads still running, whose
    # health rows are written only when their transactions commit.
    blocks = pacing.blocked_until(list(access))
    now = timezone.now()
    rows = [
        _row(
            connector,
            last_delivery.get(connector.pk),
            health.get(connector.pk),
            access.get(connector.pk),
            now,
            blocks.get(connector.pk),
        )
        for connector in connectors
    ]
    return render(
        request,
        "syncflows/connector_health.html",
        {
            "nav": "pipeline",
            "subnav": "health",
            "rows": rows,
            "pace_shared": pacing.current_store().name != "process",
        },
    )


def _row(connector, last_delivery_at, health, access, now, blocked_until) -> dict:
    limits = [blocked_until, health.rate_limited_until if health else None]
    rate_limited_until = max((moment for moment in limits if moment), default=None)
    rate_limited = bool(rate_limited_until and rate_limited_until > now)
    token_expired = bool(
        access and access.token_expires_at and access.token_expires_at <= now
    )
    return {
        "connector": connector,
        "last_delivery_at": last_delivery_at,
        "health": health,
        "access": access,
        "rate_limited": rate_limited,
        "rate_limited_until": rate_limited_until,
        "token_expired": token_expired,
        "auth_failed": bool(health and health.auth_failed_at),
        "errors": (health.recent_errors or [])[:ERRORS_SHOWN] if health else [],
    }
