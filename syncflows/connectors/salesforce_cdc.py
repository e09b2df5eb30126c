"""Salesforce Change Data Capture events, forwarded by a signing relay.

Salesforce does not push CDC events over HTTP, so a relay subscribes to the
change event channels and POSTs each event here. The body is one event object
or a JSON array of them, in either of two shapes:

* CometD (Streaming API): ``{"data": {"payload": {...}, "event": {"replayId"}},
  "channel"}``. The body holds only the changed fields, and a null means the
  field was cleared.
* Pub/Sub API after Avro decoding: ``{"replayId", "payload": {...}}``. Every
  schema field is present and a field that did not change is null, so only
  ``changedFields`` and ``nulledFields`` in the header say what changed.

Settings: ``signature_header`` (default ``X-Meshline-Signature``), the header
in which the relay sends ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">``.
Secrets: the relay's signing secrets, newest first.
"""

import logging

from syncflows.connectors import register
from syncflows.connectors.base import (
    ConnectorKind,
    DeliveryRequest,
    ParsedEvent,
    ParseError,
    load_json,
)
from syncflows.connectors.signing import (
    from_epoch_ms,
    json_type_name,
    normalize_text,
    require_body,
    require_field,
    require_object,
    verify_timestamped_hmac,
)

logger = logging.getLogger(__name__)

SOURCE = "Salesforce change"
HEADER = "ChangeEventHeader"
CHANGE_TYPES = {
    "CREATE": "create",
    "UPDATE": "update",
    "DELETE": "delete",
    "UNDELETE": "update",
}


class SalesforceCdcKind(ConnectorKind):
    kind = "salesforce_cdc"

    def verify(self, connector, request: DeliveryRequest) -> None:
        if request.verified:
            return
        verify_timestamped_hmac(connector, request)

    def parse(self, connector, request: DeliveryRequest) -> list[ParsedEvent]:
        require_body(request)
        body = load_json(request.body)
        if isinstance(body, dict):
            items = [body]
        elif isinstance(body, list):
            items = body
        else:
            raise ParseError(
                "unexpected_shape",
                "A Salesforce change event body must be a JSON object or an array of "
                f"them, but it is a JSON {json_type_name(body)}.",
            )
        events = []
        for position, item in enumerate(items):
            events.extend(parse_change_event(item, position))
        logger.debug(
            "Parsed %d Salesforce change events for connector %s",
            len(events),
            connector.slug,
        )
        return events


def parse_change_event(item, position: int) -> list[ParsedEvent]:
    """Return one ParsedEvent per record id of one change event."""
    envelope = require_object(item, position, SOURCE)
    payload, replay_id, pubsub = _unwrap(envelope, position)
    header = payload.get(HEADER)
    if not isinstance(header, dict):
        raise ParseError(
            "missing_field",
            f"The {SOURCE} event at index {position} has no {HEADER} object in its "
            "payload: it is not a Change Data Capture event.",
        )

    entity = str(require_field(header, "entityName", position, SOURCE))
    raw_change_type = str(require_field(header, "changeType", position, SOURCE))
    record_ids = require_field(header, "recordIds", position, SOURCE)
    if not isinstance(record_ids, list):
        raise ParseError(
            "invalid_field",
            f"The {SOURCE} event at index {position} has recordIds that is not a list.",
        )
    change_type = _map_change_type(raw_change_type, entity, record_ids, position)
    transaction_key = require_field(header, "transactionKey", position, SOURCE)
    sequence_number = require_field(header, "sequenceNumber", position, SOURCE)
    commit_timestamp = require_field(header, "commitTimestamp", position, SOURCE)
    if isinstance(commit_timestamp, bool) or not isinstance(commit_timestamp, int):
        raise ParseError(
            "invalid_field",
            f"The {SOURCE} event at index {position} has commitTimestamp "
            f"{commit_timestamp!r}, but it must be epoch milliseconds.",
        )
    fields, full_state = _read_fields(payload, header, raw_change_type, pubsub)

    return [
        ParsedEvent(
            crm_event_id="" if replay_id is None else str(replay_id),
            dedupe_key=f"{transaction_key}:{sequence_number}:{record_id}",
            event_type=f"{entity}.{raw_change_type}",
            object_type=entity,
            record_id=str(record_id),
            occurred_at=from_epoch_ms(commit_timestamp),
            change_type=change_type,
            fields=dict(fields),
            full_state=full_state,
            sequence=_read_commit_number(header),
            raw=envelope,
        )
        for record_id in record_ids
    ]


def _unwrap(envelope: dict, position: int):
    """Return (payload, replayId, whether the event came from the Pub/Sub API)."""
    data = envelope.get("data")
    if isinstance(data, dict) and "payload" in data:
        payload = require_object(data["payload"], position, f"{SOURCE} payload of the")
        replay_id = (data.get("event") or {}).get("replayId")
        return payload, replay_id, _has_pubsub_header(payload)
    if "payload" in envelope:
        payload = require_object(
            envelope["payload"], position, f"{SOURCE} payload of the"
        )
        return payload, envelope.get("replayId"), True
    if HEADER in envelope:
        return envelope, None, _has_pubsub_header(envelope)
    raise ParseError(
        "missing_field",
        f"The {SOURCE} event at index {position} has no {HEADER}, data.payload or "
        "payload: it is not a Change Data Capture event.",
    )


def _read_commit_number(header: dict) -> int | None:
    number = header.get("commitNumber")
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    return None


def _has_pubsub_header(payload: dict) -> bool:
    header = payload.get(HEADER)
    return isinstance(header, dict) and (
        "nulledFields" in header or "diffFields" in header
    )


def _map_change_type(raw: str, entity: str, record_ids: list, position: int) -> str:
    if raw.startswith("GAP_"):
        # A gap event carries no field values: Salesforce could not capture the
        # change, so the record must be read from Salesforce again.
        raise ParseError(
            "gap_event",
            f"The {SOURCE} event at index {position} is a {raw} gap event for "
            f"{entity} {', '.join(map(str, record_ids))}: it has no field values. "
            "Read those records from Salesforce and import them as a file.",
        )
    try:
        return CHANGE_TYPES[raw]
    except KeyError:
        raise ParseError(
            "unsupported_event",
            f"The {SOURCE} event at index {position} has changeType {raw!r}; "
            f"expected one of {', '.join(CHANGE_TYPES)} or GAP_*.",
        ) from None


def _read_fields(payload: dict, header: dict, change_type: str, pubsub: bool):
    """Return (fields, full_state) from the event body, header excluded."""
    body = {key: value for key, value in payload.items() if key != HEADER}
    if change_type == "CREATE":
        return normalize_text({k: v for k, v in body.items() if v is not None}), True
    if change_type == "DELETE":
        return {}, False
    if not pubsub:
        return normalize_text(body), False

    nulled = set(header.get("nulledFields") or [])
    changed = set(header.get("changedFields") or []) | nulled
    fields = {}
    for key, value in body.items():
        if key in nulled:
            fields[key] = None
        elif value is not None or key in changed:
            fields[key] = value
    # NOTE: changedFields of compound fields (e.g. "BillingAddress.City") and
    # bitmap-encoded field lists are not mapped to nested values, so a nested
    # null inside a compound field is kept as sent.
    return normalize_text(fields), False


register(SalesforceCdcKind())
