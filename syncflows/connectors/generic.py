"""Generic JSON webhooks: a JSON object or an array of objects, read by paths.

The sender signs each delivery as Stripe does: the header (``signature_header``,
default ``X-Meshline-Signature``) is ``t=<unix seconds>,v1=<hex>`` where the
hex is HMAC-SHA256 of ``t + "." + raw body`` under one of the connector's
secrets. Deliveries more than 300 s from the receive time are rejected.

Settings (paths are dotted, such as ``data.object.id``, and a number selects
an array element):

``event_id_path``
    The event id. When set, it is required and is the dedupe key. When not
    set, the dedupe key is the SHA-256 of the event as canonical JSON, so two
    byte-identical events count as one.
``object_type`` or ``object_type_path``
    A fixed object type, or the path of a value that names it.
``object_type_map``
    Raw value of ``object_type_path`` to object type, for example
    ``{"deal.creation": "deal"}``. When set, an unmapped value is an error.
``record_id_path`` and ``record_id_paths``
    The record id path, and per object type paths that take precedence, for
    example ``{"line_item": "line_item_id"}``.
``occurred_at_path``
    ISO-8601 (UTC when it has no offset) or epoch seconds, milliseconds or
    microseconds. When not set, occurred_at is the receive time and the
    sequence is the event's index in the delivery.
``fields_path``
    The object holding the record's fields. Default: the whole event.
``change_type_path`` and ``change_type_map``
    Where the change type is and how raw values map to create, update,
    delete or merge. Default: every event is an update.
``merged_ids_path``
    The list of ids merged into the record, for merge events.
``full_state``
    True when the fields are the whole record. Default false.
``parents``
    Per object type, the parent record, for example
    ``{"line_item": {"type": "deal", "id_path": "deal_id"}}``. The parent id is
    required unless the entry has ``"required": false``, in which case an
    event without it has no parent.
"""

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field

from syncflows.connectors import register
from syncflows.connectors.base import (
    ConnectorKind,
    DeliveryRequest,
    ParsedEvent,
    ParseError,
    load_json,
)
from syncflows.connectors.signing import (
    json_type_name,
    normalize_text,
    parse_timestamp,
    require_body,
    verify_timestamped_hmac,
)

logger = logging.getLogger(__name__)

CHANGE_TYPES = ("create", "update", "delete", "merge")
MAX_DEDUPE_KEY_LENGTH = 200  # InboundEvent.dedupe_key max_length
_MISSING = object()
_TYPE_NAMES = {str: "a string", dict: "an object", bool: "true or false"}


@dataclass(frozen=True)
class GenericSettings:
    event_id_path: str = ""
    object_type: str = ""
    object_type_path: str = ""
    object_type_map: dict = field(default_factory=dict)
    record_id_path: str = ""
    record_id_paths: dict = field(default_factory=dict)
    occurred_at_path: str = ""
    fields_path: str = ""
    change_type_path: str = ""
    change_type_map: dict = field(default_factory=dict)
    merged_ids_path: str = ""
    full_state: bool = False
    parents: dict = field(default_factory=dict)

    @classmethod
    def from_connector(cls, connector) -> "GenericSettings":
        """Read and check the settings; a wrong type raises ParseError."""
        settings = connector.settings or {}
        values = {}
        for setting in dataclasses.fields(cls):
            if setting.name not in settings:
                continue
            value = settings[setting.name]
            if not isinstance(value, setting.type):
                expected = _TYPE_NAMES[setting.type]
                raise _invalid_setting(connector, setting.name, expected)
            values[setting.name] = value
        parsed = cls(**values)
        parsed.check(connector)
        return parsed

    def check(self, connector) -> None:
        if not (self.object_type or self.object_type_path):
            raise _missing_setting(connector, "object_type or object_type_path")
        if not (self.record_id_path or self.record_id_paths):
            raise _missing_setting(connector, "record_id_path or record_id_paths")
        for object_type, parent in self.parents.items():
            if not (
                isinstance(parent, dict)
                and parent.get("type")
                and parent.get("id_path")
            ):
                raise _invalid_setting(
                    connector,
                    f"parents.{object_type}",
                    'an object with "type" and "id_path"',
                )


class GenericKind(ConnectorKind):
    kind = "generic"

    def verify(self, connector, request: DeliveryRequest) -> None:
        if request.verified:
            return
        verify_timestamped_hmac(connector, request)

    def parse(self, connector, request: DeliveryRequest) -> list[ParsedEvent]:
        require_body(request)
        settings = GenericSettings.from_connector(connector)
        body = load_json(request.body)
        if isinstance(body, dict):
            items = [body]
        elif isinstance(body, list):
            items = body
        else:
            raise ParseError(
                "unexpected_shape",
                "A generic webhook body must be a JSON object or an array of objects, "
                f"but it is a JSON {json_type_name(body)}.",
            )
        events = [
            parse_event(settings, item, position, request)
            for position, item in enumerate(items)
        ]
        logger.debug(
            "Parsed %d generic events for connector %s", len(events), connector.slug
        )
        return events


def parse_event(
    settings: GenericSettings, item, position: int, request: DeliveryRequest
) -> ParsedEvent:
    if not isinstance(item, dict):
        raise ParseError(
            "unexpected_shape",
            f"The event at index {position} is a JSON {json_type_name(item)}, but an "
            "object was expected.",
        )
    raw_type, object_type = _read_object_type(settings, item, position)
    event_id = ""
    if settings.event_id_path:
        event_id = _read_id(item, settings.event_id_path, position)
    dedupe_key = event_id or "sha256:" + _canonical_hash(item)
    if len(dedupe_key) > MAX_DEDUPE_KEY_LENGTH:
        raise ParseError(
            "invalid_field",
            f"The event at index {position} has an id longer than "
            f"{MAX_DEDUPE_KEY_LENGTH} characters at {settings.event_id_path!r}.",
        )

    event = ParsedEvent(
        crm_event_id=event_id,
        dedupe_key=dedupe_key,
        event_type=raw_type,
        object_type=object_type,
        record_id=_read_id(item, _record_id_path(settings, object_type), position),
        occurred_at=request.received_at,
        change_type=_read_change_type(settings, item, position),
        fields=_read_fields(settings, item, position),
        full_state=settings.full_state,
        sequence=position,
        raw=item,
    )
    if settings.occurred_at_path:
        event.occurred_at = _read_time(item, settings.occurred_at_path, position)
        event.sequence = None
    parent = settings.parents.get(object_type)
    if parent:
        _read_parent(event, parent, item, position)
    if settings.merged_ids_path and event.change_type == "merge":
        event.merged_ids = _read_merged_ids(item, settings.merged_ids_path, position)
    return event


def _read_parent(event: ParsedEvent, parent: dict, item: dict, position: int) -> None:
    path = parent["id_path"]
    if parent.get("required", True) is False and resolve_path(item, path) in (
        _MISSING,
        None,
        "",
    ):
        return
    event.parent_type = parent["type"]
    event.parent_id = _read_id(item, path, position)


def resolve_path(value, path: str):
    """Return the value at a dotted path, or _MISSING when a step is absent."""
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _require_path(item: dict, path: str, position: int):
    value = resolve_path(item, path)
    if value is _MISSING or value is None or value == "":
        raise ParseError(
            "missing_field",
            f"The event at index {position} has no value at {path!r}: fix the "
            "sender, or the connector's path settings.",
        )
    return value


def _read_id(item: dict, path: str, position: int) -> str:
    value = _require_path(item, path, position)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ParseError(
            "invalid_field",
            f"The event at index {position} has a JSON {json_type_name(value)} at "
            f"{path!r}, but an id must be a string or an integer.",
        )
    return normalize_text(str(value))


def _read_object_type(settings: GenericSettings, item: dict, position: int):
    """Return (raw value, object type)."""
    if not settings.object_type_path:
        return settings.object_type, settings.object_type
    raw_type = _read_id(item, settings.object_type_path, position)
    if not settings.object_type_map:
        return raw_type, raw_type
    object_type = settings.object_type_map.get(raw_type)
    if not object_type:
        raise ParseError(
            "unsupported_event",
            f"The event at index {position} has {raw_type!r} at "
            f"{settings.object_type_path!r}, which object_type_map does not list: "
            "add it to the connector's object_type_map.",
        )
    return raw_type, object_type


def _record_id_path(settings: GenericSettings, object_type: str) -> str:
    path = settings.record_id_paths.get(object_type) or settings.record_id_path
    if not path:
        raise ParseError(
            "invalid_settings",
            f"No record id path is set for object type {object_type!r}: add it to "
            "record_id_paths, or set record_id_path.",
        )
    return path


def _read_change_type(settings: GenericSettings, item: dict, position: int) -> str:
    if not settings.change_type_path:
        return "update"
    raw = _read_id(item, settings.change_type_path, position)
    change_type = settings.change_type_map.get(raw, raw)
    if change_type not in CHANGE_TYPES:
        raise ParseError(
            "unsupported_event",
            f"The event at index {position} has {raw!r} at "
            f"{settings.change_type_path!r}, which is not one of "
            f"{', '.join(CHANGE_TYPES)}: add it to the connector's change_type_map.",
        )
    return change_type


def _read_fields(settings: GenericSettings, item: dict, position: int) -> dict:
    if not settings.fields_path:
        return normalize_text(item)
    fields = _require_path(item, settings.fields_path, position)
    if not isinstance(fields, dict):
        raise ParseError(
            "invalid_field",
            f"The event at index {position} has a JSON {json_type_name(fields)} at "
            f"{settings.fields_path!r}, but the fields must be an object.",
        )
    return normalize_text(fields)


def _read_time(item: dict, path: str, position: int):
    value = _require_path(item, path, position)
    try:
        return parse_timestamp(value)
    except ValueError:
        raise ParseError(
            "invalid_field",
            f"The event at index {position} has {value!r} at {path!r}, which is "
            "neither ISO-8601 nor an epoch number.",
        ) from None


def _read_merged_ids(item: dict, path: str, position: int) -> list[str]:
    value = resolve_path(item, path)
    if value is _MISSING or value is None:
        return []
    if not isinstance(value, list):
        raise ParseError(
            "invalid_field",
            f"The event at index {position} has a JSON {json_type_name(value)} at "
            f"{path!r}, but merged ids must be an array.",
        )
    return [str(merged_id) for merged_id in value]


def _canonical_hash(item: dict) -> str:
    try:
        canonical = json.dumps(
            item, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    except RecursionError as exc:
        raise ParseError(
            "too_deep", "The JSON body is nested too deeply to read."
        ) from exc
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _missing_setting(connector, names: str) -> ParseError:
    return ParseError(
        "invalid_settings",
        f"Connector '{connector.slug}' has neither of the settings {names}: set one "
        "of them in the connector's settings, then replay the delivery.",
    )


def _invalid_setting(connector, name: str, expected: str) -> ParseError:
    return ParseError(
        "invalid_settings",
        f"The {name} setting of connector '{connector.slug}' must be {expected}: fix "
        "it in the connector's settings, then replay the delivery.",
    )


register(GenericKind())
