import logging

from django.db import connection
from django.http import JsonResponse

logger = logging.getLogger(__name__)


def health(request):
    """Liveness and readiness: the database answers and the broker is reachable."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        logger.error("Health check: database unavailable: %s", exc)
        checks["database"] = "unavailable"
    try:
        from django_q.brokers import get_broker

        broker = get_broker()
        checks["broker"] = "ok" if broker.ping() else "unavailable"
    except Exception as exc:
        logger.error("Health check: broker unavailable: %s", exc)
        checks["broker"] = "unavailable"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503)
