"""Receiving a CRM delivery: verify, store, deduplicate and normalise.

Receiving is one transaction: the raw delivery, its events (the dedupe rows)
and their record changes commit together, and the HTTP answer is sent only
after the commit. Processing the changes is queued on commit.
"""

import hashlib
import logging
from dataclasses import dataclass, field

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, OperationalError, transaction
from django.utils.datastructures import CaseInsensitiveMapping

from meshline.models import UsedSignature
from syncflows.connectors import DeliveryRejected, DeliveryRequest, ParseError, get_kind
from syncflows.models import Delivery, InboundEvent, RecordChange
from syncflows.services import ledger
from syncflows.services.errors import ActionRefused
from syncflows.services.normalise import apply_event, record_key

logger = logging.getLogger(__name__)
Step = ledger.LedgerEntry.Step

# Request headers worth keeping for verification and replay. Authorisation
# and cookies are never stored.
KEPT_HEADERS = (
    "Content-Type",
    "User-Agent",
    "X-HubSpot-Signature-v3",
    "X-HubSpot-Request-Timestamp",
    "X-Meshline-Signature",
    "Stripe-Signature",
    "SOAPAction",
)


# The signature header of each kind that signs its deliveries; a connector's
# ``signature_header`` setting overrides it.
SIGNATURE_HEADERS = {
    "hubspot": "X-HubSpot-Signature-v3",
    "salesforce_cdc": "X-Meshline-Signature",
    "generic": "X-Meshline-Signature",
}


@dataclass
class ReceiveResult:
    status: str  # accepted, duplicate, rejected or quarantined
    delivery: Delivery | None = None
    error: Exception | None = None
    accepted: int = 0
    duplicates: int = 0
    stale: int = 0
    change_ids: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "status": self.status,
            "delivery": self.delivery.pk if self.delivery else None,
            "events_accepted": self.accepted,
            "events_duplicate": self.duplicates,
            "events_stale": self.stale,
        }


def receive(connector, request: DeliveryRequest, *, replay_of=None) -> ReceiveResult:
    """Verify, parse and store one delivery; queue its changes for processing."""
    kind = get_kind(connector.kind)
    content_hash = hashlib.sha256(request.body).hexdigest()
    try:
        if not request.verified:
            try:
                kind.verify(connector, request)
            except ImproperlyConfigured as exc:
                # Meshline's own fault: keep the delivery and let the CRM retry.
                raise DeliveryRejected("secret_unreadable", str(exc), status=503) from exc
    except DeliveryRejected as exc:
        return _reject(connector, request, content_hash, exc, replay_of)
    signature = None if request.verified else signature_digest(connector, request)
    try:
        parsed = kind.parse(connector, request)
    except ParseError as exc:
        try:
            delivery = _store_failed(
                connector, request, content_hash, Delivery.Status.QUARANTINED, exc,
                replay_of, signature,
            )
        except DeliveryRejected as reused:
            return _reject(connector, request, content_hash, reused, replay_of)
        logger.warning(
            "Quarantined delivery %s for connector %s: %s",
            delivery.pk,
            connector.slug,
            exc.code,
            extra={"delivery_id": delivery.pk},
        )
        return ReceiveResult("quarantined", delivery=delivery, error=exc)

    # A concurrent receiver may insert the same event between the dedupe
    # check and the insert; the unique constraint then aborts this attempt,
    # and the next attempt finds that event and records a duplicate.
    for attempt in range(3):
        try:
            with transaction.atomic():
                claim_signature(connector, signature)
                result = _store_events(connector, request, content_hash, parsed, replay_of)
            break
        except DeliveryRejected as reused:
            return _reject(connector, request, content_hash, reused, replay_of)
        except (IntegrityError, OperationalError) as exc:
            if attempt == 2 or not _is_retryable(exc):
                raise
            logger.info(
                "Receive on connector %s conflicted (%s); retrying", connector.slug, type(exc).__name__
            )

    if result.delivery is not None:
        logger.info(
            "Delivery %s for connector %s: %s event(s) accepted, %s duplicate, %s stale",
            result.delivery.pk,
            connector.slug,
            result.accepted,
            result.duplicates,
            result.stale,
            extra={"delivery_id": result.delivery.pk},
        )
    if result.change_ids:
        from syncflows.tasks import enqueue_changes

        enqueue_changes(result.change_ids)
    return result


def _is_retryable(exc) -> bool:
    """Return whether a failed receive is worth another try: a dedupe race, a
    deadlock or a serialization failure."""
    if isinstance(exc, IntegrityError):
        return True
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    return sqlstate in ("40P01", "40001")


def signature_digest(connector, request: DeliveryRequest) -> str | None:
    """Return the SHA-256 of the delivery's signature, or None when it has none.

    HubSpot signs the timestamp with the body, so the pair is the signature.
    Pipedrive and Outbound Messages send HTTP basic auth, which is the same on
    every request, so they have no signature to remember; the dedupe on CRM
    event ids still stops a replayed body from running twice.
    """
    if connector.kind == "hubspot":
        names = (SIGNATURE_HEADERS["hubspot"], "X-HubSpot-Request-Timestamp")
    elif connector.kind in SIGNATURE_HEADERS:
        names = (connector.settings.get("signature_header") or SIGNATURE_HEADERS[connector.kind],)
    else:
        return None
    values = [request.headers.get(name) or "" for name in names]
    if not values[0]:
        return None
    joined = "\n".join([connector.kind, *values])
    return hashlib.sha256(joined.encode("utf-8", "replace")).hexdigest()


def claim_signature(connector, digest: str | None) -> None:
    """Record a signature as used; reject it when it was used before.

    Runs inside the receive transaction, so a delivery that fails to store does
    not use up its signature."""
    if digest is None:
        return
    try:
        with transaction.atomic():
            UsedSignature.objects.create(connector_id=connector.pk, digest=digest)
    except IntegrityError:
        raise DeliveryRejected(
            "signature_reused",
            f"This signature was already used for a delivery to connector "
            f"'{connector.slug}', so the delivery is a replay and was not stored "
            "as new. A CRM retry signs again with a new timestamp.",
            status=409,
        ) from None


def _reject(connector, request, content_hash, exc, replay_of) -> ReceiveResult:
    delivery = _store_failed(connector, request, content_hash, Delivery.Status.REJECTED, exc, replay_of)
    logger.warning(
        "Rejected delivery %s for connector %s: %s",
        delivery.pk,
        connector.slug,
        exc.code,
        extra={"delivery_id": delivery.pk},
    )
    return ReceiveResult("rejected", delivery=delivery, error=exc)


def _store_failed(connector, request, content_hash, status, exc, replay_of, signature=None) -> Delivery:
    with transaction.atomic():
        claim_signature(connector, signature)
        delivery = _new_delivery(connector, request, content_hash, status, replay_of)
        delivery.error = exc.message
        delivery.error_code = exc.code
        delivery.save()
        step = Step.REJECT if status == Delivery.Status.REJECTED else Step.QUARANTINE
        ledger.write(
            step,
            f"Delivery {delivery.pk} {status}: {exc.message}",
            ok=False,
            connector=connector,
            delivery=delivery,
        )
    return delivery


def _new_delivery(connector, request, content_hash, status, replay_of) -> Delivery:
    headers = {name: request.headers[name] for name in KEPT_HEADERS if name in request.headers}
    return Delivery.objects.create(
        connector=connector,
        received_at=request.received_at,
        source=request.source,
        status=status,
        content_hash=content_hash,
        body=request.body,
        size=len(request.body),
        content_type=request.headers.get("Content-Type", "")[:200],
        headers=headers,
        request_url=request.url[:2000],
        replay_of=replay_of,
    )


def _store_events(connector, request, content_hash, parsed, replay_of) -> ReceiveResult:
    result = ReceiveResult("accepted")
    keys = [event.dedupe_key for event in parsed]
    seen = dict(
        InboundEvent.objects.filter(connector=connector, dedupe_key__in=keys).values_list(
            "dedupe_key", "pk"
        )
    )
    fresh = []
    for position, event in enumerate(parsed):
        if event.dedupe_key in seen:
            result.duplicates += 1
            ledger.write(
                Step.DUPLICATE,
                f"Duplicate of inbound event {seen[event.dedupe_key]} "
                f"(CRM event {event.crm_event_id or event.dedupe_key}); nothing new written.",
                record_key=record_key(connector, event.object_type, event.record_id),
                connector=connector,
            )
            continue
        seen[event.dedupe_key] = None  # a repeat inside the same batch
        fresh.append((position, event))

    if not fresh:
        result.status = "duplicate"
        return result

    delivery = _new_delivery(
        connector, request, content_hash, Delivery.Status.ACCEPTED, replay_of
    )
    result.delivery = delivery
    ledger.write(
        Step.RECEIVE,
        f"Delivery {delivery.pk} accepted with {len(fresh)} new event(s) "
        f"and {result.duplicates} duplicate(s).",
        connector=connector,
        delivery=delivery,
    )
    # Apply oldest first, so that a batch whose events arrive out of order
    # still builds the state in the order the CRM made the changes.
    fresh.sort(key=lambda item: (item[1].occurred_at, item[1].sequence or 0, item[0]))
    for position, parsed_event in fresh:
        event = InboundEvent.objects.create(
            delivery=delivery,
            connector=connector,
            position=position,
            crm_event_id=parsed_event.crm_event_id[:200],
            dedupe_key=parsed_event.dedupe_key[:200],
            event_type=parsed_event.event_type[:100],
            object_type=parsed_event.object_type,
            record_id=parsed_event.record_id,
            occurred_at=parsed_event.occurred_at,
            sequence=parsed_event.sequence,
            payload=parsed_event.raw,
            received_at=request.received_at,
        )
        change = apply_event(event, parsed_event)
        if change.status == RecordChange.Status.STALE:
            result.stale += 1
            event.status = InboundEvent.Status.STALE
            event.save(update_fields=["status"])
        else:
            result.change_ids.append(change.pk)
        result.accepted += 1
    return result


def replay_delivery(delivery, *, acting_user) -> ReceiveResult:
    """Run a stored delivery through the receive path again, after a fix.

    A rejected delivery is verified again (its secret may have been fixed); a
    quarantined one was authentic, so only parsing runs again.
    """
    from meshline.roles import require

    require(acting_user, "replay_event")
    if delivery.status not in (Delivery.Status.REJECTED, Delivery.Status.QUARANTINED):
        raise ActionRefused(
            f"Delivery {delivery.pk} is {delivery.get_status_display().lower()}; only "
            "rejected or quarantined deliveries can be replayed."
        )
    request = DeliveryRequest(
        method="POST",
        url=delivery.request_url,
        headers=CaseInsensitiveMapping(delivery.headers),
        body=bytes(delivery.body),
        received_at=delivery.received_at,
        source=Delivery.Source.REPLAY,
        verified=delivery.status == Delivery.Status.QUARANTINED,
    )
    result = receive(delivery.connector, request, replay_of=delivery)
    if result.status in ("accepted", "duplicate"):
        Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.REPLAYED)
    ledger.write(
        Step.ACTION,
        f"{acting_user} replayed delivery {delivery.pk}: {result.status}.",
        connector=delivery.connector,
        delivery=delivery,
        actor=acting_user,
    )
    logger.info("Delivery %s replayed by user %s: %s", delivery.pk, acting_user.pk, result.status)
    return result
