"""Receiving a CRM delivery: verify, store, deduplicate and normalise.

The webhook endpoint stores the raw delivery and its events (the dedupe
rows) in one transaction, queues a task, and responds only after the
commit. On PostgreSQL a delivery of new events is stored by a single
statement. A worker then applies the events to their records and processes
the changes. Without ``defer``, as for replays, the delivery, its events
and their record changes commit together.
"""

import hashlib
import logging
from dataclasses import dataclass, field, replace

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils.datastructures import CaseInsensitiveMapping

from meshline.db import insert_together
from meshline.logging import log_context
from meshline.models import UsedSignature
from syncflows.connectors import DeliveryRejected, DeliveryRequest, ParseError, get_kind
from syncflows.models import Delivery, InboundEvent, RecordChange
from syncflows.services import ledger
from syncflows.services.errors import ActionRefused
from syncflows.services.normalise import apply_event, record_key
from syncflows.services.storable import check_storable, stored_dedupe_key

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
    stale: int | None = 0  # None while a worker has not normalised the events
    change_ids: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        summary = {
            "status": self.status,
            "delivery": self.delivery.pk if self.delivery else None,
            "events_accepted": self.accepted,
            "events_duplicate": self.duplicates,
        }
        if self.stale is not None:
            summary["events_stale"] = self.stale
        return summary


def receive(connector, request: DeliveryRequest, *, replay_of=None, defer=False) -> ReceiveResult:
    """Verify, parse and store one delivery; queue its changes for processing.

    With ``defer``, as the webhook endpoint does, the delivery and its events
    (the dedupe rows) are stored, and a worker applies the events to their
    records later (``normalise_delivery``), so the CRM gets its response
    after a few inserts. Without it, the events are applied in the same
    transaction."""
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
        check_storable(connector, parsed)
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
    for event in parsed:
        event.dedupe_key = stored_dedupe_key(event.dedupe_key)

    result = None
    if defer and connection.vendor == "postgresql":
        result = _store_at_once(connector, request, content_hash, parsed, replay_of, signature)
    # A concurrent receiver may insert the same event between the dedupe
    # check and the insert; the unique constraint then aborts this attempt,
    # and the next attempt finds that event and records a duplicate.
    for attempt in range(0 if result else 3):
        try:
            with transaction.atomic():
                claim_signature(connector, signature)
                result, stored = _store_events(
                    connector, request, content_hash, parsed, replay_of, defer
                )
                if stored and defer:
                    from syncflows.tasks import enqueue_deliveries

                    result.stale = None
                    enqueue_deliveries([result.delivery.pk])
                elif stored:
                    _normalise(result, stored, connector)
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
            "not yet known" if result.stale is None else result.stale,
            extra={"delivery_id": result.delivery.pk},
        )
    return result


def _normalise(result, stored, connector, *, queue: bool = True) -> None:
    """Apply stored events to their records, in the caller's transaction, and
    queue the changes unless ``queue`` is off."""
    rows = []
    for event, parsed_event in stored:
        change = apply_event(event, parsed_event, rows)
        if change.status == RecordChange.Status.STALE:
            result.stale += 1
            event.status = InboundEvent.Status.STALE
            event.save(update_fields=["status"])
        else:
            result.change_ids.append(change.pk)
    ledger.LedgerEntry.objects.bulk_create(rows)
    if result.change_ids and queue:
        from syncflows.tasks import enqueue_changes

        enqueue_changes(result.change_ids)


def normalise_delivery(delivery_id: int) -> ReceiveResult | None:
    """Apply the events of a delivery stored with ``defer`` to their records.

    Return None when the delivery is not waiting, for example because another
    worker has locked or normalised it. The body is parsed again, which gives the
    same events, matched to the stored ones by position."""
    for attempt in range(3):
        try:
            with log_context(delivery_id=delivery_id), transaction.atomic():
                return _normalise_stored(delivery_id)
        except (IntegrityError, OperationalError) as exc:
            if attempt == 2 or not _is_retryable(exc):
                raise
            logger.info(
                "Normalising delivery %s conflicted (%s); retrying",
                delivery_id,
                type(exc).__name__,
                extra={"delivery_id": delivery_id},
            )
    return None


def _normalise_stored(delivery_id: int) -> ReceiveResult | None:
    delivery = (
        Delivery.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("connector")
        .filter(pk=delivery_id, status=Delivery.Status.RECEIVED)
        .first()
    )
    if delivery is None:
        return None
    connector = delivery.connector
    request = _stored_request(delivery, verified=True)
    try:
        parsed = get_kind(connector.kind).parse(connector, request)
    except ParseError as exc:
        _quarantine_stored(delivery, exc)
        return None

    events = list(delivery.events.filter(change__isnull=True).order_by("id"))
    for event in events:
        event.connector = connector

    result = ReceiveResult("accepted", delivery=delivery, accepted=len(events))
    # The caller processes the changes itself, so they are not queued.
    pairs = [(event, parsed[event.position]) for event in events]
    _normalise(result, pairs, connector, queue=False)
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.ACCEPTED)
    logger.info(
        "Delivery %s normalised: %s change(s), %s stale",
        delivery.pk,
        len(result.change_ids),
        result.stale,
        extra={"delivery_id": delivery.pk},
    )
    return result


def quarantine_unnormalised(delivery_id: int, exc: Exception) -> None:
    """Quarantine a stored delivery whose events failed to apply with an
    unexpected error, so that it is visible and can be replayed after a fix."""
    logger.error(
        "Normalising delivery %s failed (%s: %s); quarantining it",
        delivery_id,
        type(exc).__name__,
        exc,
        exc_info=exc,
        extra={"delivery_id": delivery_id},
    )
    with log_context(delivery_id=delivery_id), transaction.atomic():
        delivery = (
            Delivery.objects.select_for_update(of=("self",))
            .select_related("connector")
            .filter(pk=delivery_id, status=Delivery.Status.RECEIVED)
            .first()
        )
        if delivery is None:
            return
        detail = f"{type(exc).__name__}: {exc}".strip()[:500]
        _quarantine_stored(
            delivery,
            ParseError(
                "normalise_failed",
                f"Applying the events to their records failed ({detail}). "
                "Fix the cause, then replay the delivery.",
            ),
        )


def _quarantine_stored(delivery, exc: ParseError) -> None:
    """Quarantine a stored delivery that no longer parses.

    The endpoint parsed this body before storing it, so only a changed
    parser or connector setting, or an error while applying the events,
    gets here. The events, never applied, are
    removed so that a replay does not take them for duplicates."""
    delivery.events.filter(change__isnull=True).delete()
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.Status.QUARANTINED, error=exc.message, error_code=exc.code
    )
    ledger.write(
        Step.QUARANTINE,
        f"Delivery {delivery.pk} quarantined: {exc.message}",
        ok=False,
        connector=delivery.connector,
        delivery=delivery,
    )
    logger.warning(
        "Quarantined delivery %s when normalising it: %s",
        delivery.pk,
        exc.code,
        extra={"delivery_id": delivery.pk},
    )


def _stored_request(delivery, *, verified: bool) -> DeliveryRequest:
    return DeliveryRequest(
        method="POST",
        url=delivery.request_url,
        headers=CaseInsensitiveMapping(delivery.headers),
        body=bytes(delivery.body),
        received_at=delivery.received_at,
        source=delivery.source,
        verified=verified,
    )


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
    delivery = _build_delivery(connector, request, content_hash, status, replay_of)
    delivery.save(force_insert=True)
    return delivery


def _build_delivery(connector, request, content_hash, status, replay_of, pk=None) -> Delivery:
    headers = {name: request.headers[name] for name in KEPT_HEADERS if name in request.headers}
    return Delivery(
        pk=pk,
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


def _store_events(connector, request, content_hash, parsed, replay_of, defer: bool):
    """Store the delivery and its new events, the dedupe rows; return the
    result and the ``(event, parsed event)`` pairs still to be applied, oldest
    first."""
    result = ReceiveResult("accepted")
    keys = [event.dedupe_key for event in parsed]
    seen = dict(
        InboundEvent.objects.filter(connector=connector, dedupe_key__in=keys).values_list(
            "dedupe_key", "pk"
        )
    )
    rows, fresh = [], []
    # Repeats of an event stored from this same batch: their message names
    # the stored event, whose id exists only after the insert below.
    repeats = []
    for position, event in enumerate(parsed):
        if event.dedupe_key in seen:
            result.duplicates += 1
            row = ledger.build(
                Step.DUPLICATE,
                _duplicate_message(seen[event.dedupe_key], event),
                record_key=record_key(connector, event.object_type, event.record_id),
                connector=connector,
            )
            rows.append(row)
            if seen[event.dedupe_key] is None:
                repeats.append((row, event))
            continue
        seen[event.dedupe_key] = None  # a repeat inside the same batch
        fresh.append((position, event))

    if not fresh:
        result.status = "duplicate"
        ledger.LedgerEntry.objects.bulk_create(rows)
        return result, []

    status = Delivery.Status.RECEIVED if defer else Delivery.Status.ACCEPTED
    delivery = _new_delivery(connector, request, content_hash, status, replay_of)
    result.delivery = delivery
    rows.append(_receive_row(connector, delivery, len(fresh), result.duplicates))
    events = _build_events(connector, request, delivery, fresh)
    InboundEvent.objects.bulk_create(events)
    stored_ids = {event.dedupe_key: event.pk for event in events}
    for row, event in repeats:
        row.message = _duplicate_message(stored_ids[event.dedupe_key], event)
    ledger.LedgerEntry.objects.bulk_create(rows)
    result.accepted = len(fresh)
    return result, [(event, parsed_event) for event, (_position, parsed_event) in zip(events, fresh)]


# The dedupe constraint's index serves the EXISTS.
_TAKE_ID_AND_CHECK = (
    f"SELECT nextval(pg_get_serial_sequence('{Delivery._meta.db_table}', 'id')), "
    f"EXISTS (SELECT 1 FROM {InboundEvent._meta.db_table} "
    "WHERE connector_id = %s AND dedupe_key = ANY(%s))"
)


def _store_at_once(connector, request, content_hash, parsed, replay_of, signature):
    """Store a delivery of new events with one query and one insert, on
    PostgreSQL, and return the result.

    Return None when the delivery needs the general path: an event is
    already stored, an event repeats inside the delivery, or a concurrent
    receiver wrote a unique row first.

    The query takes the delivery's id from its sequence and checks for
    stored events. The insert writes the delivery, its events, the ledger
    row, the used signature and, on the ORM broker, the task row, in one
    statement, which is its own transaction."""
    from syncflows.tasks import delivery_task_rows, enqueue_deliveries

    keys = [event.dedupe_key for event in parsed]
    if not keys or len(set(keys)) != len(keys):
        return None
    with connection.cursor() as cursor:
        cursor.execute(_TAKE_ID_AND_CHECK, [connector.pk, keys])
        delivery_id, seen = cursor.fetchone()
    if seen:
        return None

    delivery = _build_delivery(
        connector, request, content_hash, Delivery.Status.RECEIVED, replay_of, pk=delivery_id
    )
    fresh = list(enumerate(parsed))
    events = _build_events(connector, request, delivery, fresh)
    used = [UsedSignature(connector_id=connector.pk, digest=signature)] if signature else []
    task_rows = delivery_task_rows([delivery_id])
    try:
        insert_together(
            [
                [delivery],
                events,
                [_receive_row(connector, delivery, len(events), 0)],
                used,
                task_rows or [],
            ]
        )
    except (IntegrityError, OperationalError) as exc:
        if not _is_retryable(exc):
            raise
        logger.info(
            "Storing a delivery for connector %s conflicted with a concurrent write (%s); "
            "retrying on the general path",
            connector.slug,
            type(exc).__name__,
        )
        return None
    if task_rows is None:
        enqueue_deliveries([delivery_id])
    return ReceiveResult("accepted", delivery=delivery, accepted=len(events), stale=None)


def _receive_row(connector, delivery, accepted: int, duplicates: int):
    return ledger.build(
        Step.RECEIVE,
        f"Delivery {delivery.pk} accepted with {accepted} new event(s) "
        f"and {duplicates} duplicate(s).",
        connector=connector,
        delivery=delivery,
    )


def _build_events(connector, request, delivery, fresh) -> list[InboundEvent]:
    """Build the unsaved events of ``(position, parsed event)`` pairs, and
    sort the pairs in place, oldest first, as the events are."""
    # Apply oldest first, so that a batch whose events arrive out of order
    # still builds the state in the order the CRM made the changes.
    fresh.sort(key=lambda item: (item[1].occurred_at, item[1].sequence or 0, item[0]))
    return [
        InboundEvent(
            delivery=delivery,
            connector=connector,
            position=position,
            crm_event_id=parsed_event.crm_event_id[:200],
            # receive() has already made every key fit its column.
            dedupe_key=parsed_event.dedupe_key,
            event_type=parsed_event.event_type[:100],
            object_type=parsed_event.object_type,
            record_id=parsed_event.record_id,
            occurred_at=parsed_event.occurred_at,
            sequence=parsed_event.sequence,
            payload=parsed_event.raw,
            received_at=request.received_at,
        )
        for position, parsed_event in fresh
    ]


def _duplicate_message(stored_id, event) -> str:
    return (
        f"Duplicate of inbound event {stored_id} "
        f"(CRM event {event.crm_event_id or event.dedupe_key}); nothing new written."
    )


def replay_delivery(delivery, *, acting_user) -> ReceiveResult:
    """Run a stored delivery through the receive path again, after a fix.

    A rejected delivery is verified again (its secret may have been fixed); a
    quarantined one was authentic, so only parsing runs again.
    """
    from meshline.roles import require

    require(acting_user, "replay_event")
    with log_context(delivery_id=delivery.pk):
        return _replay(delivery, acting_user)


def _replay(delivery, acting_user) -> ReceiveResult:
    if delivery.status not in (Delivery.Status.REJECTED, Delivery.Status.QUARANTINED):
        raise ActionRefused(
            f"Delivery {delivery.pk} is {delivery.get_status_display().lower()}; only "
            "rejected or quarantined deliveries can be replayed."
        )
    request = _stored_request(delivery, verified=delivery.status == Delivery.Status.QUARANTINED)
    request = replace(request, source=Delivery.Source.REPLAY)
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
