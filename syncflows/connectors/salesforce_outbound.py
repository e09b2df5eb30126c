"""Salesforce Outbound Messages: SOAP ``notifications`` with up to 100 records.

Outbound Messages carry no signature. The delivery is taken as authentic when
its OrganizationId is the configured organisation, and, when the connector has
secrets, when its HTTP basic credentials match (Salesforce sends them when the
endpoint URL is written as ``https://user:password@host/...``).

Settings: ``organization_id``, the 15- or 18-character Salesforce organisation
id (required), and ``username`` for basic auth. Secrets: basic auth passwords.

Salesforce resends a message with the same Notification Id until it receives
an Ack, so the Notification Id is the dedupe key.
"""

import logging
import re
from xml.etree.ElementTree import Element
from xml.etree.ElementTree import ParseError as XmlParseError
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from django.http import HttpResponse

from syncflows.connectors import register
from syncflows.connectors.base import (
    ConnectorKind,
    DeliveryRejected,
    DeliveryRequest,
    ParsedEvent,
    ParseError,
)
from syncflows.connectors.signing import (
    normalize_text,
    parse_timestamp,
    require_body,
    verify_basic_auth,
)

logger = logging.getLogger(__name__)

OUTBOUND_NS = "{http://soap.sforce.com/2005/09/outbound}"
XSI_NS = "{http://www.w3.org/2001/XMLSchema-instance}"
CONTENT_TYPE = "text/xml; charset=utf-8"
SOURCE = "Outbound Message notification"

ACK_XML = """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
 <soapenv:Body>
  <notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">
   <Ack>true</Ack>
  </notificationsResponse>
 </soapenv:Body>
</soapenv:Envelope>
"""

FAULT_XML = """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
 <soapenv:Body>
  <soapenv:Fault>
   <faultcode>soapenv:Client</faultcode>
   <faultstring>{message}</faultstring>
  </soapenv:Fault>
 </soapenv:Body>
</soapenv:Envelope>
"""

# Finds the id in a body that is not well-formed XML, to tell a broken message
# from this organisation apart from one that is not from Salesforce at all.
_ORGANIZATION_PATTERN = re.compile(
    rb"<(?:[\w.-]+:)?OrganizationId\b[^>]*>\s*([A-Za-z0-9]{15,18})\s*</"
)


class SalesforceOutboundKind(ConnectorKind):
    kind = "salesforce_outbound"

    def verify(self, connector, request: DeliveryRequest) -> None:
        if request.verified:
            return
        if connector.secret_list:
            username = connector.settings.get("username", "")
            verify_basic_auth(connector, request, username)
        expected = (connector.settings.get("organization_id") or "").strip()
        if not expected:
            raise DeliveryRejected(
                "organization_not_configured",
                f"Connector '{connector.slug}' has no organization_id setting, so no "
                "Outbound Message can be checked: set it to the Salesforce "
                "organisation id (Setup, Company Information).",
                status=403,
            )
        received = find_organization_id(connector, request.body)
        if not same_salesforce_id(expected, received):
            raise DeliveryRejected(
                "organization_mismatch",
                f"The Outbound Message comes from organisation {received}, but "
                f"connector '{connector.slug}' expects {expected}: point the "
                "Salesforce outbound message at the right connector, or fix its "
                "organization_id setting.",
                status=403,
            )

    def parse(self, connector, request: DeliveryRequest) -> list[ParsedEvent]:
        require_body(request)
        root = parse_xml(request.body)
        notifications = _find_notifications(root)
        context = {
            "OrganizationId": _child_text(notifications, "OrganizationId"),
            "ActionId": _child_text(notifications, "ActionId"),
        }
        items = notifications.findall(f"{OUTBOUND_NS}Notification")
        events = [
            parse_notification(item, position, context, request)
            for position, item in enumerate(items)
        ]
        logger.debug(
            "Parsed %d Outbound Message notifications for connector %s",
            len(events),
            connector.slug,
        )
        return events

    def accepted_response(self, connector, request: DeliveryRequest, summary: dict):
        # Without <Ack>true</Ack> Salesforce resends the message.
        return HttpResponse(ACK_XML, content_type=CONTENT_TYPE, status=200)

    def rejected_response(self, error: DeliveryRejected) -> HttpResponse:
        # Salesforce shows the faultstring in its outbound message delivery log.
        body = FAULT_XML.format(message=escape(error.message))
        return HttpResponse(body, content_type=CONTENT_TYPE, status=error.status)


def same_salesforce_id(expected: str, received: str) -> bool:
    """Compare ids that may be in 15- or 18-character form.

    The 18-character form is the case-sensitive 15-character id plus a
    3-character checksum, so the first 15 characters identify the record.
    """
    if expected == received:
        return True
    lengths = (15, 18)
    if len(expected) not in lengths or len(received) not in lengths:
        return False
    return expected[:15] == received[:15]


def find_organization_id(connector, body: bytes) -> str:
    """Return the OrganizationId, or reject a body in which none can be found."""
    try:
        root = fromstring(body)
    except (XmlParseError, DefusedXmlException) as exc:
        match = _ORGANIZATION_PATTERN.search(body)
        if match:
            return match.group(1).decode("ascii")
        raise DeliveryRejected(
            "invalid_xml",
            f"The body is not well-formed XML ({exc}) and has no OrganizationId: "
            f"connector '{connector.slug}' accepts only Salesforce Outbound Messages.",
            status=400,
        ) from exc
    for element in root.iter():
        if _local_name(element) == "OrganizationId" and (element.text or "").strip():
            return element.text.strip()
    raise DeliveryRejected(
        "organization_missing",
        "The XML body has no OrganizationId, or an empty one: connector "
        f"'{connector.slug}' accepts only Salesforce Outbound Messages.",
        status=403,
    )


def parse_xml(body: bytes) -> Element:
    try:
        return fromstring(body)
    except XmlParseError as exc:
        # The parser's message ends with the line and column of the error.
        raise ParseError(
            "invalid_xml", f"The Outbound Message is not well-formed XML: {exc}."
        ) from exc
    except DefusedXmlException as exc:
        raise ParseError(
            "forbidden_xml",
            f"The Outbound Message uses an XML feature that is rejected for safety "
            f"({type(exc).__name__}): Salesforce never sends entities or DTDs.",
        ) from exc


def parse_notification(
    item: Element, position: int, context: dict, request: DeliveryRequest
) -> ParsedEvent:
    notification_id = _child_text(item, "Id")
    if not notification_id:
        raise _missing(position, "Id")
    record = item.find(f"{OUTBOUND_NS}sObject")
    if record is None:
        raise _missing(position, "sObject")
    object_type = (record.get(f"{XSI_NS}type") or "").rpartition(":")[2]
    if not object_type:
        raise _missing(position, "xsi:type on sObject")
    fields = _read_fields(record)
    record_id = fields.get("Id")
    if not isinstance(record_id, str) or not record_id:
        raise _missing(position, "sf:Id")

    return ParsedEvent(
        crm_event_id=notification_id,
        dedupe_key=notification_id,
        event_type="outbound_message",
        object_type=object_type,
        record_id=record_id,
        occurred_at=_read_occurred_at(fields, position, request),
        change_type="update",
        fields=fields,
        full_state=False,
        # SessionId is left out because it is a live Salesforce session token.
        raw={
            **context,
            "NotificationId": notification_id,
            "type": object_type,
            "sObject": fields,
        },
    )


def _read_fields(record: Element) -> dict:
    try:
        return {_local_name(child): _read_value(child) for child in record}
    except RecursionError as exc:
        raise ParseError(
            "too_deep", "The XML body is nested too deeply to read."
        ) from exc


def _read_value(element: Element):
    if element.get(f"{XSI_NS}nil") == "true":
        return None
    if len(element):
        return {_local_name(child): _read_value(child) for child in element}
    text = element.text or ""
    if text == "true":
        return True
    if text == "false":
        return False
    # Numbers stay strings as sent ("1234.56", "45000.0"), so no amount
    # passes through a float.
    return normalize_text(text)


def _read_occurred_at(fields: dict, position: int, request: DeliveryRequest):
    for name in ("LastModifiedDate", "SystemModstamp"):
        value = fields.get(name)
        if not value:
            continue
        try:
            return parse_timestamp(value)
        except ValueError:
            raise ParseError(
                "invalid_field",
                f"The {SOURCE} at index {position} has {name} {value!r}, which is "
                "not an ISO-8601 timestamp.",
            ) from None
    return request.received_at


def _find_notifications(root: Element) -> Element:
    notifications = root.find(f".//{OUTBOUND_NS}notifications")
    if notifications is None:
        raise ParseError(
            "unexpected_shape",
            "The SOAP body has no notifications element in the namespace "
            "http://soap.sforce.com/2005/09/outbound: it is not an Outbound Message.",
        )
    return notifications


def _child_text(element: Element, name: str) -> str:
    child = element.find(f"{OUTBOUND_NS}{name}")
    if child is None or child.text is None:
        return ""
    return child.text.strip()


def _local_name(element: Element) -> str:
    return element.tag.rpartition("}")[2]


def _missing(position: int, name: str) -> ParseError:
    return ParseError(
        "missing_field",
        f"The {SOURCE} at index {position} has no {name}: the body does not have "
        "the shape of an Outbound Message.",
    )


register(SalesforceOutboundKind())
