"""HubSpot webhooks v3: a JSON array of up to 100 events per POST.

Settings: ``public_url``, the webhook URL exactly as configured in the HubSpot
app. HubSpot signs that URL, so set it when a proxy changes the host or scheme
the server receives. Secrets: the app's client secret (two during a rotation).
"""

import base64
import hmac
import logging
import re

from syncflows.connectors import register
from syncflows.connectors.base import (
    ConnectorKind,
    DeliveryRejected,
    DeliveryRequest,
    ParsedEvent,
    ParseError,
    load_json,
)
from syncflows.connectors.signing import (
    check_timestamp,
    from_epoch_ms,
    get_header,
    hmac_sha256,
    json_type_name,
    normalize_text,
    require_body,
    require_field,
    require_object,
    require_secrets,
)

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
SOURCE = "HubSpot"

# The part of subscriptionType after the object name, e.g. "deal.creation".
CHANGE_TYPES = {
    "creation": "create",
    "deletion": "delete",
    "privacyDeletion": "delete",
    "propertyChange": "update",
    "restore": "update",
    "merge": "merge",
}

# HubSpot's request-validation page tells integrators to decode these escapes
# in the URI before signing. Client libraries differ on it, so both forms are accepted.
_RESERVED_ESCAPES = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}
_RESERVED_PATTERN = re.compile("|".join(_RESERVED_ESCAPES), re.IGNORECASE)


class HubSpotKind(ConnectorKind):
    kind = "hubspot"

    def verify(self, connector, request: DeliveryRequest) -> None:
        if request.verified:
            return
        signature = get_header(request.headers, SIGNATURE_HEADER)
        if not signature:
            raise DeliveryRejected(
                "signature_missing",
                f"The {SIGNATURE_HEADER} header is missing: connector "
                f"'{connector.slug}' accepts only HubSpot webhooks signed with "
                "signature version 3.",
            )
        timestamp = self._read_timestamp(connector, request)
        secrets = require_secrets(connector, "HubSpot client secret")
        check_timestamp(connector, request, int(timestamp) // 1000, TIMESTAMP_HEADER)

        received = signature.strip().encode("utf-8", "replace")
        for uri in signed_uris(connector, request):
            source = (
                request.method.upper().encode()
                + uri.encode("utf-8")
                + request.body
                + timestamp.encode("ascii")
            )
            for secret in secrets:
                expected = base64.b64encode(hmac_sha256(secret, source))
                if hmac.compare_digest(expected, received):
                    return
        raise DeliveryRejected(
            "signature_invalid",
            f"The {SIGNATURE_HEADER} header does not match the body: check the "
            f"client secret configured for connector '{connector.slug}', and its "
            "public_url setting if a proxy changes the URL.",
        )

    def _read_timestamp(self, connector, request) -> str:
        timestamp = (get_header(request.headers, TIMESTAMP_HEADER) or "").strip()
        if not timestamp:
            raise DeliveryRejected(
                "timestamp_missing",
                f"The {TIMESTAMP_HEADER} header is missing: HubSpot sends it with "
                f"every v3 signature, so connector '{connector.slug}' cannot check "
                "the delivery's age.",
            )
        if not (timestamp.isascii() and timestamp.isdigit()):
            raise DeliveryRejected(
                "timestamp_invalid",
                f"The {TIMESTAMP_HEADER} header is not a number of milliseconds.",
            )
        return timestamp

    def parse(self, connector, request: DeliveryRequest) -> list[ParsedEvent]:
        require_body(request)
        body = load_json(request.body)
        if not isinstance(body, list):
            raise ParseError(
                "unexpected_shape",
                "HubSpot webhooks v3 send a JSON array of events, but the body is a "
                f"JSON {json_type_name(body)}.",
            )
        events = [parse_event(item, position) for position, item in enumerate(body)]
        logger.debug(
            "Parsed %d HubSpot events for connector %s", len(events), connector.slug
        )
        return events


def signed_uris(connector, request: DeliveryRequest) -> list[str]:
    """Return the URI forms HubSpot may have signed, as-is first."""
    uri = connector.settings.get("public_url") or request.url
    decoded = _RESERVED_PATTERN.sub(
        lambda match: _RESERVED_ESCAPES[match[0].upper()], uri
    )
    return [uri] if decoded == uri else [uri, decoded]


def parse_event(item, position: int) -> ParsedEvent:
    event = require_object(item, position, SOURCE)
    subscription_type = require_field(event, "subscriptionType", position, SOURCE)
    object_type, _, action = str(subscription_type).partition(".")
    change_type = CHANGE_TYPES.get(action)
    if not object_type or change_type is None:
        raise ParseError(
            "unsupported_event",
            f"The HubSpot event at index {position} has subscriptionType "
            f"{subscription_type!r}, which Meshline does not read. Supported actions: "
            f"{', '.join(sorted(CHANGE_TYPES))}. Remove that subscription in the "
            "HubSpot app or ask for support.",
        )
    event_id = require_field(event, "eventId", position, SOURCE)
    # HubSpot documents subscriptionId on every event. It is optional here so
    # that trimmed bodies in file imports still parse, and eventId with
    # occurredAt still tell their changes apart.
    subscription_id = event.get("subscriptionId", "")
    occurred_at = _read_occurred_at(event, position)

    parsed = ParsedEvent(
        crm_event_id=str(event_id),
        # eventId is documented as not guaranteed unique, so the object and
        # property are part of the key too; a redelivery keeps all five values
        # while its attemptNumber grows.
        dedupe_key=(
            f"{subscription_id}:{event_id}:{occurred_at}:"
            f"{event.get('objectId', event.get('primaryObjectId', ''))}:"
            f"{event.get('propertyName', '')}"
        ),
        event_type=str(subscription_type),
        object_type=object_type,
        record_id="",
        occurred_at=from_epoch_ms(occurred_at),
        change_type=change_type,
        fields={},
        sequence=occurred_at,
        raw=event,
    )
    if change_type == "merge":
        _read_merge(parsed, event, position)
    else:
        parsed.record_id = str(require_field(event, "objectId", position, SOURCE))
    if action == "propertyChange":
        parsed.fields = _read_property_change(event, position)
    return parsed


def _read_occurred_at(event: dict, position: int) -> int:
    occurred_at = require_field(event, "occurredAt", position, SOURCE)
    if isinstance(occurred_at, bool) or not isinstance(occurred_at, int):
        raise ParseError(
            "invalid_field",
            f"The HubSpot event at index {position} has occurredAt {occurred_at!r}, "
            "but it must be epoch milliseconds as an integer.",
        )
    return occurred_at


def _read_merge(parsed: ParsedEvent, event: dict, position: int) -> None:
    parsed.record_id = str(require_field(event, "primaryObjectId", position, SOURCE))
    merged = require_field(event, "mergedObjectIds", position, SOURCE)
    if not isinstance(merged, list):
        raise ParseError(
            "invalid_field",
            f"The HubSpot event at index {position} has mergedObjectIds that is not "
            "a list of ids.",
        )
    parsed.merged_ids = [str(object_id) for object_id in merged]


def _read_property_change(event: dict, position: int) -> dict:
    name = require_field(event, "propertyName", position, SOURCE)
    value = event.get("propertyValue")
    # HubSpot sends an empty string when a property is cleared.
    if value == "":
        value = None
    return {normalize_text(str(name)): normalize_text(value)}


register(HubSpotKind())
