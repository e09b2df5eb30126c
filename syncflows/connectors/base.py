"""The connector interface: verify a delivery, then parse it into events.

A connector kind is stateless. ``verify`` checks the signature over the raw
bytes exactly as received; ``parse`` turns the body into ParsedEvent objects.
Both take the Connector row (for its secrets and settings) and a
DeliveryRequest, so the webhook view and the ingest command share one path.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.http import HttpResponse, JsonResponse


class DeliveryRejected(Exception):
    """The delivery is not authentic or not acceptable, so it gets a 4xx response."""

    def __init__(self, code: str, message: str, status: int = 401):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class ParseError(Exception):
    """The delivery is authentic but cannot be read; it is quarantined."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DeliveryRequest:
    method: str
    url: str  # the absolute URL the request was sent to, query string included
    headers: Mapping[str, str]  # case-insensitive, as Django's request.headers
    body: bytes
    received_at: datetime  # aware, UTC
    source: str = "webhook"  # webhook, file or replay
    # File imports and replays were verified when first received.
    verified: bool = False


@dataclass
class ParsedEvent:
    crm_event_id: str
    # Stable across redeliveries of the same change, and different for
    # different changes. Unique per connector.
    dedupe_key: str
    event_type: str
    object_type: str
    record_id: str
    occurred_at: datetime  # aware, UTC
    change_type: str  # create, update, delete or merge
    # New field values. None means the CRM cleared the field. A field that did
    # not change is absent, never None.
    fields: dict
    # Whether ``fields`` contains the whole record, so absent fields are unknown.
    full_state: bool = False
    previous: dict | None = None
    sequence: int | None = None
    parent_type: str = ""
    parent_id: str = ""
    merged_ids: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


class ConnectorKind:
    kind = ""

    def verify(self, connector, request: DeliveryRequest) -> None:
        raise NotImplementedError

    def parse(self, connector, request: DeliveryRequest) -> list[ParsedEvent]:
        raise NotImplementedError

    def accepted_response(self, connector, request: DeliveryRequest, summary: dict):
        """Return the response sent after the delivery is committed."""
        return JsonResponse(summary, status=200)

    def rejected_response(self, error: DeliveryRejected) -> HttpResponse:
        return JsonResponse(
            {"message": error.message, "code": error.code}, status=error.status
        )


def load_json(body: bytes):
    """Decode a JSON body with every non-integer number as a Decimal string.

    Amounts must never pass through a binary float, so ``parse_float`` keeps
    the digits as sent and plain_json() turns them into strings.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(
            "invalid_encoding",
            f"The body is not valid UTF-8 (byte {exc.start}): send JSON encoded as UTF-8.",
        ) from exc
    try:
        return plain_json(json.loads(text, parse_float=Decimal, parse_constant=_reject_constant))
    except json.JSONDecodeError as exc:
        raise ParseError(
            "invalid_json",
            f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
        ) from exc
    except RecursionError as exc:
        raise ParseError("too_deep", "The JSON body is nested too deeply to read.") from exc
    except ValueError as exc:
        # Python refuses integers of more than 4,300 digits (int_max_str_digits).
        raise ParseError("invalid_json", f"The body contains a number too long to read ({exc}). Send amounts as decimal strings.") from exc


def _reject_constant(name):
    raise ParseError("invalid_json", f"The body contains {name}, which is not a JSON number.")


def plain_json(value):
    """Return ``value`` with every Decimal replaced by its string form."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {key: plain_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_json(item) for item in value]
    return value
