"""Helpers shared by the connector kinds.

The first half checks authenticity: HMAC-SHA256 signatures in the Stripe
``t=...,v1=...`` header scheme and HTTP basic auth against the connector's
secrets. The second half converts what every kind parses: Unicode
normalisation of text, epoch and ISO-8601 timestamps, and errors that name the
event position and the missing field.
"""

import base64
import binascii
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from syncflows.connectors.base import DeliveryRejected, DeliveryRequest, ParseError

# Stripe's default tolerance (stripe-python ``Webhook.DEFAULT_TOLERANCE``) and
# HubSpot's five-minute window are both 300 seconds.
TOLERANCE_SECONDS = 300
DEFAULT_SIGNATURE_HEADER = "X-Meshline-Signature"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def get_header(headers: Mapping[str, str], name: str) -> str | None:
    """Return the header ``name`` whatever its case, or None when it is absent."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


def hmac_sha256(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def require_secrets(connector, what: str) -> list[str]:
    """Return the connector's secrets, or reject when none is configured."""
    secrets = [secret for secret in connector.secret_list if secret]
    if not secrets:
        raise DeliveryRejected(
            "secret_missing",
            f"Connector '{connector.slug}' has no {what} configured, so no delivery "
            "can be verified: add it to the connector's secrets.",
        )
    return secrets


def check_timestamp(connector, request: DeliveryRequest, seconds: int, header: str):
    """Reject a signed timestamp more than 300 s before or after received_at."""
    now = int(request.received_at.timestamp())
    age = now - seconds
    if age > TOLERANCE_SECONDS:
        raise DeliveryRejected(
            "signature_expired",
            f"The {header} timestamp is {age} s old, more than the "
            f"{TOLERANCE_SECONDS} s allowed for connector '{connector.slug}': the "
            "delivery may be a replay, or the sender's clock is wrong.",
        )
    if -age > TOLERANCE_SECONDS:
        raise DeliveryRejected(
            "timestamp_in_future",
            f"The {header} timestamp is {-age} s in the future, more than the "
            f"{TOLERANCE_SECONDS} s allowed for connector '{connector.slug}': check "
            "the sender's clock.",
        )


def verify_timestamped_hmac(connector, request: DeliveryRequest) -> None:
    """Verify a ``t=<unix seconds>,v1=<hex>`` header as Stripe defines it.

    The signed payload is ``t + "." + raw body``. Any ``v1`` value may match any
    secret, because both sides list several during a rotation. Other schemes
    such as ``v0`` are ignored, so a sender cannot downgrade the check.
    """
    name = connector.settings.get("signature_header", DEFAULT_SIGNATURE_HEADER)
    value = get_header(request.headers, name)
    if not value:
        raise DeliveryRejected(
            "signature_missing",
            f"The {name} header is missing: connector '{connector.slug}' accepts "
            "only deliveries signed as t=<unix seconds>,v1=<hex HMAC-SHA256>.",
        )
    timestamp, signatures = _split_signature_header(connector, name, value)
    secrets = require_secrets(connector, "signing secret")
    signed = timestamp.encode("ascii") + b"." + request.body
    expected = [hmac_sha256(secret, signed).hex().encode() for secret in secrets]
    if not any(
        hmac.compare_digest(candidate, signature)
        for candidate in expected
        for signature in signatures
    ):
        raise DeliveryRejected(
            "signature_invalid",
            f"The {name} header does not match the body: check the signing secret "
            f"configured for connector '{connector.slug}'.",
        )
    check_timestamp(connector, request, int(timestamp), name)


def _split_signature_header(connector, name: str, value: str):
    timestamp = None
    signatures = []
    for part in value.split(","):
        key, _, item = part.strip().partition("=")
        if key == "t":
            timestamp = item
        elif key == "v1" and item.strip():
            signatures.append(item.strip().lower().encode("utf-8", "replace"))
    if timestamp is None or not (timestamp.isascii() and timestamp.isdigit()):
        signatures = []
    if not signatures:
        raise DeliveryRejected(
            "signature_malformed",
            f"The {name} header is not in the form t=<unix seconds>,v1=<hex>: "
            f"check the signing step of the sender for connector '{connector.slug}'.",
        )
    return timestamp, signatures


def verify_basic_auth(connector, request: DeliveryRequest, username: str) -> None:
    """Check ``Authorization: Basic`` against ``username`` and any secret."""
    secrets = require_secrets(connector, "password")
    value = get_header(request.headers, "Authorization") or ""
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise DeliveryRejected(
            "auth_missing",
            "The request has no HTTP basic Authorization header: set the user name "
            f"and password of connector '{connector.slug}' in the sender's webhook.",
        )
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    user, separator, password = decoded.partition(":")
    user_matches = hmac.compare_digest(user.encode(), username.encode("utf-8"))
    password_matches = any(
        hmac.compare_digest(password.encode(), secret.encode()) for secret in secrets
    )
    if not (separator and user_matches and password_matches):
        raise DeliveryRejected(
            "auth_invalid",
            "The HTTP basic user name or password is wrong: check that the sender "
            f"uses the credentials configured for connector '{connector.slug}'.",
        )


def normalize_text(value):
    """Return ``value`` with every string in it in Unicode NFC form.

    A CRM may send "ä" as one code point or as "a" plus a combining diaeresis.
    NFC makes both the same string, so comparisons and ERP lookups agree.
    """
    try:
        return _normalize(value)
    except RecursionError as exc:
        raise ParseError("too_deep", "The body is nested too deeply to read.") from exc


def _normalize(value):
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    return value


def from_epoch_ms(milliseconds: int) -> datetime:
    return EPOCH + timedelta(milliseconds=milliseconds)


def from_epoch_us(microseconds: int) -> datetime:
    return EPOCH + timedelta(microseconds=microseconds)


def to_epoch_us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def parse_timestamp(value) -> datetime:
    """Read an ISO-8601 string or an epoch number as an aware UTC datetime.

    Epoch numbers (int or numeric string) below 1e11 are seconds, below 1e14
    milliseconds and above that microseconds. 1e11 seconds is in the year 5138,
    so the ranges cannot overlap for real dates. An ISO string without an
    offset is taken as UTC. Raises ValueError on anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a timestamp")
    if isinstance(value, int) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        return _from_epoch_number(Decimal(value))
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a timestamp")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 timestamp") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _from_epoch_number(number: Decimal) -> datetime:
    if abs(number) < Decimal("1e11"):
        scale = 1_000_000
    elif abs(number) < Decimal("1e14"):
        scale = 1_000
    else:
        scale = 1
    try:
        return from_epoch_us(int(number * scale))
    except (OverflowError, InvalidOperation):
        raise ValueError(f"{number} is out of range for a timestamp") from None


def require_field(event: dict, key: str, position: int, source: str):
    """Return ``event[key]``, or raise ParseError naming the field and position."""
    value = event.get(key)
    if value is None or value == "":
        raise ParseError(
            "missing_field",
            f"The {source} event at index {position} has no {key}: the body does "
            "not have the expected shape, so check what sent it.",
        )
    return value


def require_object(value, position: int, source: str) -> dict:
    if not isinstance(value, dict):
        raise ParseError(
            "unexpected_shape",
            f"The {source} event at index {position} is a JSON "
            f"{json_type_name(value)}, but an object was expected.",
        )
    return value


def json_type_name(value) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def require_body(request: DeliveryRequest) -> None:
    if not request.body.strip():
        raise ParseError(
            "empty_body",
            "The body is empty: the sender sent no events, so check its webhook "
            "set-up.",
        )
