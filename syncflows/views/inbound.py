"""The inbound endpoint: ``POST /api/v1/inbound/<connector-slug>/``.

The answer is sent only after the delivery is committed. Every refusal has a
JSON body (SOAP for Salesforce Outbound Messages) that says what is wrong.
"""

import logging

from django.conf import settings
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from syncflows.connectors import DeliveryRejected, DeliveryRequest, get_kind
from syncflows.services.connectors import active_connector
from syncflows.services.receive import receive

logger = logging.getLogger(__name__)


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"message": message, "code": code}, status=status)


@csrf_exempt
@require_POST
def inbound(request, slug: str):
    connector = active_connector(slug)
    if connector is None:
        return _error(
            404,
            "unknown_connector",
            f"No active connector is named {slug!r}. Check the webhook URL configured in the CRM.",
        )
    kind = get_kind(connector.kind)
    limit = settings.MESHLINE_MAX_DELIVERY_BYTES
    length = request.META.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length) > limit:
        return kind.rejected_response(
            DeliveryRejected(
                "too_large",
                f"The body is {int(length)} bytes, over the limit of {limit} bytes. "
                "Send smaller batches.",
                status=413,
            )
        )
    body = request.body
    if len(body) > limit:
        return kind.rejected_response(
            DeliveryRejected(
                "too_large", f"The body is over the limit of {limit} bytes.", 413
            )
        )
    delivery_request = DeliveryRequest(
        method=request.method,
        url=request.build_absolute_uri(),
        headers=request.headers,
        body=body,
        received_at=timezone.now(),
    )
    result = receive(connector, delivery_request, defer=True)
    if result.status == "rejected":
        return kind.rejected_response(result.error)
    if result.status == "quarantined":
        error = result.error
        return kind.rejected_response(
            DeliveryRejected(
                error.code,
                f"{error.message} The delivery was kept in quarantine as "
                f"{result.delivery.pk} and can be replayed after a fix.",
                status=422,
            )
        )
    return kind.accepted_response(connector, delivery_request, result.summary())
