"""Checks that parsed events fit the columns they are stored in.

PostgreSQL rejects text and JSON that contain NUL (U+0000) or an unpaired
UTF-16 surrogate, and a value longer than its ``varchar`` column. Without a
check, such an event fails its insert, the endpoint returns HTTP 500, and
the CRM retries the delivery forever. ``check_storable`` raises ParseError
instead, so the delivery is quarantined with its body kept.
"""

import hashlib

from syncflows.connectors import ParseError
from syncflows.models import InboundEvent, SourceRecord
from syncflows.services.normalise import record_key

DEDUPE_KEY_LENGTH = InboundEvent._meta.get_field("dedupe_key").max_length
OBJECT_TYPE_LENGTH = InboundEvent._meta.get_field("object_type").max_length
RECORD_ID_LENGTH = InboundEvent._meta.get_field("record_id").max_length
# The record key also names parents (SourceRecord.parent_ref) and merged
# records (RecordAlias.alias_key), in columns of the same length.
RECORD_KEY_LENGTH = SourceRecord._meta.get_field("record_key").max_length

_NUL = "a NUL character (U+0000)"
_SURROGATE = "an unpaired UTF-16 surrogate (invalid Unicode)"


def stored_dedupe_key(key: str) -> str:
    """Return the dedupe key as stored: the key itself when it fits its column,
    else its start followed by the SHA-256 of the whole key.

    Cutting a long key to the column's length would make two events whose
    keys differ only past that length one event and its duplicate.
    NOTE: rows stored by earlier versions keep long keys cut to 200
    characters, so the first resend of such an event is not found as a
    duplicate."""
    if len(key) <= DEDUPE_KEY_LENGTH:
        return key
    suffix = ":sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return key[: DEDUPE_KEY_LENGTH - len(suffix)] + suffix


def check_storable(connector, parsed) -> None:
    """Raise ParseError, naming the event and the value, when a parsed event
    has a value that the database cannot store. Call it before
    ``stored_dedupe_key``, which hashes the key as UTF-8."""
    for position, event in enumerate(parsed):
        _check_text(position, event)
        _check_length(position, "object type", event.object_type, OBJECT_TYPE_LENGTH)
        _check_length(position, "record id", event.record_id, RECORD_ID_LENGTH)
        keys = [record_key(connector, event.object_type, event.record_id)]
        if event.parent_type and event.parent_id:
            keys.append(record_key(connector, event.parent_type, event.parent_id))
        for merged_id in event.merged_ids:
            _check_length(position, "merged record id", merged_id, RECORD_ID_LENGTH)
            keys.append(record_key(connector, event.object_type, merged_id))
        for key in keys:
            _check_length(position, "record key", key, RECORD_KEY_LENGTH)


def _check_length(position: int, label: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise ParseError(
            "invalid_field",
            f"The {label} of the event at index {position} is {len(value)} characters "
            f"long, but at most {limit} can be stored.",
        )


def _check_text(position: int, event) -> None:
    found = _first_unstorable_text(event)
    if found is None:
        return
    where, problem = found
    raise ParseError(
        "invalid_field",
        f"The event at index {position} has {problem} in its {where}. PostgreSQL "
        "cannot store it, so correct the value in the CRM and send the change again.",
    )


def _first_unstorable_text(event) -> tuple[str, str] | None:
    """Return where the first unstorable text of an event is and what is
    wrong with it, or None. The payload comes first, because its path names
    the field that the CRM admin must correct."""
    for label, value in (("payload", event.raw), ("fields", event.fields), ("previous", event.previous)):
        found = _find_unstorable(value)
        if found is not None:
            problem, path = found
            return (f"{label} field {_format_path(path)}" if path else label), problem
    scalars = [
        ("CRM event id", event.crm_event_id),
        ("dedupe key", event.dedupe_key),
        ("event type", event.event_type),
        ("object type", event.object_type),
        ("record id", event.record_id),
        ("parent type", event.parent_type),
        ("parent id", event.parent_id),
        *(("merged record id", merged_id) for merged_id in event.merged_ids),
    ]
    for label, value in scalars:
        problem = _find_unstorable(value)
        if problem is not None:
            return label, problem[0]
    return None


def _text_problem(text: str) -> str | None:
    """Return what makes ``text`` unstorable in PostgreSQL, or None."""
    if "\x00" in text:
        return _NUL
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE
    return None


def _find_unstorable(value) -> tuple[str, list] | None:
    """Return the problem and the path of keys and indexes to the first
    unstorable string in a JSON-like value, or None."""
    if isinstance(value, str):
        problem = _text_problem(value)
        return None if problem is None else (problem, [])
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                problem = _text_problem(key)
                if problem is not None:
                    return problem, [key]
            found = _find_unstorable(item)
            if found is not None:
                return found[0], [key, *found[1]]
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_unstorable(item)
            if found is not None:
                return found[0], [index, *found[1]]
    return None


def _format_path(path: list) -> str:
    """Format a path as ``current.title`` or ``lineItems[1].key``, escaping
    the characters that make a key unstorable, so that the message itself
    can be stored."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = str(part)
        if not name.isprintable():
            name = repr(name)[1:-1]
        text += f".{name}" if text else name
    return text
