"""Pipedrive webhooks v1 and v2, one event per POST.

v1 sends ``meta`` with ``current`` and ``previous`` as whole objects. v2 sends
``meta`` with ``data`` (the whole object, custom fields under
``custom_fields``) and ``previous`` holding only the changed keys. v2 has no
merge action: a merge arrives as a delete carrying ``merged_to_id``.

Public v2 examples disagree on types, so ``meta.timestamp`` may be ISO-8601
or epoch seconds, and ids may be integers or strings.

Settings: ``username``, the HTTP basic user name set in the Pipedrive webhook.
Secrets: HTTP basic passwords, newest first.
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
    from_epoch_us,
    json_type_name,
    normalize_text,
    parse_timestamp,
    require_body,
    require_field,
    to_epoch_us,
    verify_basic_auth,
)

logger = logging.getLogger(__name__)

SOURCE = "Pipedrive"
V1_ACTIONS = {
    "added": "create",
    "updated": "update",
    "deleted": "delete",
    "merged": "merge",
}
V2_ACTIONS = {"create": "create", "change": "update", "delete": "delete"}


class PipedriveKind(ConnectorKind):
    kind = "pipedrive"

    def verify(self, connector, request: DeliveryRequest) -> None:
        if request.verified:
            return
        verify_basic_auth(connector, request, connector.settings.get("username", ""))

    def parse(self, connector, request: DeliveryRequest) -> list[ParsedEvent]:
        require_body(request)
        body = load_json(request.body)
        if not isinstance(body, dict):
            raise ParseError(
                "unexpected_shape",
                "A Pipedrive webhook body must be a JSON object, but it is a JSON "
                f"{json_type_name(body)}.",
            )
        meta = body.get("meta")
        if not isinstance(meta, dict):
            raise ParseError(
                "missing_field",
                f"The {SOURCE} event at index 0 has no meta object: it is not a "
                "Pipedrive webhook.",
            )
        if _is_v2(body, meta):
            event = parse_v2(body, meta)
        else:
            event = parse_v1(body, meta)
        logger.debug(
            "Parsed Pipedrive %s %s %s for connector %s",
            event.object_type,
            event.record_id,
            event.change_type,
            connector.slug,
        )
        return [event]


def _is_v2(body: dict, meta: dict) -> bool:
    if str(meta.get("version", "")).startswith("2"):
        return True
    return "data" in body and "current" not in body


def parse_v1(body: dict, meta: dict) -> ParsedEvent:
    object_type = str(require_field(meta, "object", 0, SOURCE))
    action = str(require_field(meta, "action", 0, SOURCE))
    change_type = _map_action(action, V1_ACTIONS)
    current = _optional_object(body, "current")
    previous = _optional_object(body, "previous")
    record_id = _v1_record_id(meta, current, previous)
    occurred_at, sequence = _v1_time(meta)

    # Never webhook_id: the same change registered under several webhooks
    # arrives once per webhook and must be recorded once.
    # NOTE: update_time has one-second resolution, so two changes of one
    # record within the same second share a key and the second is dropped.
    version = (current or {}).get("update_time") or meta.get("timestamp_micro")
    host = meta.get("host", "")
    event = ParsedEvent(
        crm_event_id="",
        dedupe_key=f"{host}:{object_type}:{record_id}:{action}:{version}",
        event_type=str(body.get("event") or f"{action}.{object_type}"),
        object_type=object_type,
        record_id=record_id,
        occurred_at=occurred_at,
        change_type=change_type,
        fields=normalize_text(current) if current is not None else {},
        full_state=current is not None,
        previous=normalize_text(previous),
        sequence=sequence,
        raw=body,
    )
    if change_type == "merge":
        event.merged_ids = _v1_merged_ids(record_id, current, previous)
    return event


def _v1_record_id(meta: dict, current: dict | None, previous: dict | None) -> str:
    for source in (meta, current or {}, previous or {}):
        if source.get("id") not in (None, ""):
            return str(source["id"])
    raise ParseError(
        "missing_field",
        f"The {SOURCE} event at index 0 has no meta.id: the body does not have the "
        "shape of a Pipedrive v1 webhook.",
    )


def _v1_time(meta: dict):
    micro = meta.get("timestamp_micro")
    if isinstance(micro, int) and not isinstance(micro, bool):
        return from_epoch_us(micro), micro
    seconds = require_field(meta, "timestamp", 0, SOURCE)
    occurred_at = _read_timestamp(seconds, "meta.timestamp")
    return occurred_at, to_epoch_us(occurred_at)


def _v1_merged_ids(record_id: str, current, previous) -> list[str]:
    merged = (current or {}).get("merged_ids")
    if isinstance(merged, list):
        return [str(item) for item in merged]
    previous_id = (previous or {}).get("id")
    if previous_id not in (None, "") and str(previous_id) != record_id:
        return [str(previous_id)]
    return []


def parse_v2(body: dict, meta: dict) -> ParsedEvent:
    entity = str(require_field(meta, "entity", 0, SOURCE))
    entity_id = str(require_field(meta, "entity_id", 0, SOURCE))
    action = str(require_field(meta, "action", 0, SOURCE))
    change_type = _map_action(action, V2_ACTIONS)
    data = _optional_object(body, "data")
    previous = _optional_object(body, "previous")
    timestamp = require_field(meta, "timestamp", 0, SOURCE)
    occurred_at = _read_timestamp(timestamp, "meta.timestamp")

    # meta.id differs per webhook registration, so it is not part of the key.
    version = (data or {}).get("update_time") or timestamp
    host = meta.get("host", "")
    event = ParsedEvent(
        crm_event_id=str(meta.get("id") or ""),
        dedupe_key=f"{host}:{entity}:{entity_id}:{action}:{version}",
        event_type=f"{action}.{entity}",
        object_type=entity,
        record_id=entity_id,
        occurred_at=occurred_at,
        change_type=change_type,
        fields=flatten_custom_fields(data) if data is not None else {},
        full_state=data is not None,
        previous=flatten_custom_fields(previous) if previous is not None else None,
        sequence=to_epoch_us(occurred_at),
        raw=body,
    )
    merged_to = (data or {}).get("merged_to_id") or (previous or {}).get("merged_to_id")
    if change_type == "delete" and merged_to not in (None, ""):
        # The deleted record was merged into merged_to_id, the survivor.
        event.change_type = "merge"
        event.record_id = str(merged_to)
        event.merged_ids = [entity_id]
        event.fields = {}
        event.full_state = False
    return event


def flatten_custom_fields(record: dict) -> dict:
    """Return ``record`` with ``custom_fields`` as ``custom_fields.<key>`` fields.

    A v2 custom field is ``{"type": ..., "value": ...}``, and some types add
    keys such as ``currency`` or ``until``, which become
    ``custom_fields.<key>.<name>``.
    """
    fields = {key: value for key, value in record.items() if key != "custom_fields"}
    custom = record.get("custom_fields")
    if isinstance(custom, dict):
        for key, value in custom.items():
            fields.update(_flatten_custom_field(f"custom_fields.{key}", value))
    elif "custom_fields" in record:
        fields["custom_fields"] = custom
    return normalize_text(fields)


def _flatten_custom_field(name: str, value) -> dict:
    if not isinstance(value, dict):
        return {name: value}
    fields = {}
    if "value" in value:
        fields[name] = value["value"]
    for key, item in value.items():
        if key not in ("type", "value"):
            fields[f"{name}.{key}"] = item
    return fields


def _map_action(action: str, actions: dict) -> str:
    try:
        return actions[action]
    except KeyError:
        raise ParseError(
            "unsupported_event",
            f"The {SOURCE} event at index 0 has meta.action {action!r}; expected one "
            f"of {', '.join(actions)}.",
        ) from None


def _optional_object(body: dict, key: str) -> dict | None:
    value = body.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise ParseError(
        "invalid_field",
        f"The {SOURCE} event at index 0 has {key} as a JSON {json_type_name(value)}, "
        "but it must be an object or null.",
    )


def _read_timestamp(value, path: str):
    try:
        return parse_timestamp(value)
    except ValueError:
        raise ParseError(
            "invalid_field",
            f"The {SOURCE} event at index 0 has {path} {value!r}, which is neither "
            "ISO-8601 nor epoch seconds.",
        ) from None


register(PipedriveKind())
