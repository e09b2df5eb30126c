import json
from datetime import UTC, datetime
from xml.etree import ElementTree

import pytest

from syncflows.connectors import get_kind
from syncflows.connectors.base import DeliveryRejected, ParseError
from syncflows.models.connectors import Connector
from tests.crm_fixtures import (
    at_unix,
    basic_auth,
    fixture_bytes,
    make_request,
    stripe_header,
    stripe_signature,
)

RELAY_SECRET = "relay-secret-FAKE-0001"
NOW = 1725357400
ORGANIZATION_ID = "00Dxx0000000001EAA"
SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"
OUTBOUND = "{http://soap.sforce.com/2005/09/outbound}"

cdc = get_kind("salesforce_cdc")
outbound = get_kind("salesforce_outbound")


def cdc_connector(secrets=(RELAY_SECRET,), **settings):
    return Connector(
        slug="salesforce",
        kind="salesforce_cdc",
        secrets=list(secrets),
        settings=settings,
    )


def signed(body, secret=RELAY_SECRET, timestamp=NOW, now=NOW, header=None):
    name = header or "X-Meshline-Signature"
    headers = {name: stripe_header(secret, timestamp, body)}
    return make_request(body, headers, received_at=at_unix(now))


def parse_cdc(body: bytes):
    return cdc.parse(cdc_connector(), make_request(body, verified=True))


def fixture_json(name):
    return json.loads(fixture_bytes(name))


# Change Data Capture: relay signatures


def test_cdc_signature_valid():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")

    cdc.verify(cdc_connector(), signed(body))


def test_cdc_signature_wrong_secret_rejected():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")

    with pytest.raises(DeliveryRejected) as caught:
        cdc.verify(cdc_connector(), signed(body, secret="another-secret"))

    assert caught.value.code == "signature_invalid"
    assert caught.value.status == 401
    assert "X-Meshline-Signature" in caught.value.message
    assert "'salesforce'" in caught.value.message
    assert RELAY_SECRET not in caught.value.message


def test_cdc_signature_tampered_body_rejected():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")
    request = signed(body)
    tampered = make_request(
        body.replace(b"Closed Won", b"Closed Lost"),
        dict(request.headers),
        received_at=request.received_at,
    )

    with pytest.raises(DeliveryRejected) as caught:
        cdc.verify(cdc_connector(), tampered)

    assert caught.value.code == "signature_invalid"


def test_cdc_signature_expired_rejected():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")

    with pytest.raises(DeliveryRejected) as caught:
        cdc.verify(cdc_connector(), signed(body, timestamp=NOW - 301))

    assert caught.value.code == "signature_expired"


def test_cdc_signature_future_rejected():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")

    with pytest.raises(DeliveryRejected) as caught:
        cdc.verify(cdc_connector(), signed(body, timestamp=NOW + 301))

    assert caught.value.code == "timestamp_in_future"


def test_cdc_signature_missing_rejected():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")

    with pytest.raises(DeliveryRejected) as caught:
        cdc.verify(cdc_connector(), make_request(body, received_at=at_unix(NOW)))

    assert caught.value.code == "signature_missing"


def test_cdc_signature_rotation_second_secret_valid():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")
    connector = cdc_connector(secrets=["relay-secret-NEW", RELAY_SECRET])

    cdc.verify(connector, signed(body))


def test_cdc_signature_any_v1_value_valid():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")
    good = stripe_signature(RELAY_SECRET, NOW, body)
    header = f"t={NOW},v1={'0' * 64},v1={good}"
    request = make_request(
        body, {"X-Meshline-Signature": header}, received_at=at_unix(NOW)
    )

    cdc.verify(cdc_connector(), request)


def test_cdc_signature_v0_ignored():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")
    good = stripe_signature(RELAY_SECRET, NOW, body)
    request = make_request(
        body, {"X-Meshline-Signature": f"t={NOW},v0={good}"}, received_at=at_unix(NOW)
    )

    with pytest.raises(DeliveryRejected) as caught:
        cdc.verify(cdc_connector(), request)

    assert caught.value.code == "signature_malformed"


def test_cdc_signature_custom_header_setting():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")
    connector = cdc_connector(signature_header="X-Relay-Signature")

    cdc.verify(connector, signed(body, header="X-Relay-Signature"))
    with pytest.raises(DeliveryRejected) as caught:
        cdc.verify(connector, signed(body))

    assert caught.value.code == "signature_missing"
    assert "X-Relay-Signature" in caught.value.message


def test_cdc_verified_request_skips_signature():
    body = fixture_bytes("salesforce_cdc_opportunity_update_stage.json")

    cdc.verify(cdc_connector(), make_request(body, verified=True))


# Change Data Capture: parsing


def test_cdc_create_fixture_parsed():
    events = parse_cdc(fixture_bytes("salesforce_cdc_opportunity_create.json"))

    assert len(events) == 1
    event = events[0]
    assert event.object_type == "Opportunity"
    assert event.record_id == "006xx0000000001AAA"
    assert event.change_type == "create"
    assert event.full_state is True
    assert event.crm_event_id == "2142249"
    assert (
        event.dedupe_key == "00009c89-6ec4-1e25-33e2-a4ba094089e5:1:006xx0000000001AAA"
    )
    assert event.event_type == "Opportunity.CREATE"
    assert event.occurred_at == datetime(2024, 9, 3, 6, 59, 38, tzinfo=UTC)
    assert event.sequence == 1725346778429841409


def test_cdc_create_fields_every_value():
    event = parse_cdc(fixture_bytes("salesforce_cdc_opportunity_create.json"))[0]

    assert event.fields == {
        "LastModifiedDate": "2024-09-03T06:59:38.000Z",
        "AccountId": "001xx0000000001AAA",
        "Name": "FAKE-Deal Example Widgets 2024-Q3",
        "StageName": "Prospecting",
        "Amount": "1234.56",
        "CurrencyIsoCode": "EUR",
        "CloseDate": "2024-09-30",
        "Probability": "10.0",
        "Type": "New Business",
        "IsPrivate": False,
        "IsClosed": False,
        "IsWon": False,
        "ForecastCategory": "Pipeline",
        "ForecastCategoryName": "Pipeline",
        "HasOpportunityLineItem": False,
        "OwnerId": "005xx0000000001AAA",
        "CreatedById": "005xx0000000001AAA",
        "CreatedDate": "2024-09-03T06:59:38.000Z",
        "LastModifiedById": "005xx0000000001AAA",
    }


def test_cdc_create_drops_null_values():
    body = fixture_json("salesforce_cdc_opportunity_create.json")
    body["data"]["payload"]["NextStep"] = None

    event = parse_cdc(json.dumps(body).encode())[0]

    assert "NextStep" not in event.fields


def test_cdc_streaming_update_fields():
    event = parse_cdc(fixture_bytes("salesforce_cdc_opportunity_update_stage.json"))[0]

    assert event.change_type == "update"
    assert event.full_state is False
    assert event.fields == {
        "LastModifiedDate": "2024-09-03T09:56:05.000Z",
        "StageName": "Closed Won",
        "Probability": "100.0",
        "IsClosed": True,
        "IsWon": True,
        "ForecastCategory": "Closed",
        "ForecastCategoryName": "Closed",
    }
    assert (
        event.dedupe_key == "0000a62a-5497-10e0-dbe3-e99b71589a49:1:006xx0000000001AAA"
    )
    assert event.crm_event_id == "2142496"
    assert event.occurred_at == datetime(2024, 9, 3, 9, 56, 5, tzinfo=UTC)
    assert event.sequence == 1725357365187780609


def test_cdc_streaming_null_means_cleared():
    body = fixture_json("salesforce_cdc_opportunity_update_stage.json")
    body["data"]["payload"]["NextStep"] = None

    event = parse_cdc(json.dumps(body).encode())[0]

    assert "NextStep" in event.fields
    assert event.fields["NextStep"] is None


def test_cdc_pubsub_null_means_unchanged():
    body = fixture_bytes("salesforce_cdc_opportunity_update_pubsub_decoded.json")

    event = parse_cdc(body)[0]

    assert event.fields == {
        "StageName": "Closed Won",
        "NextStep": None,
        "LastModifiedDate": 1696444513000,
    }
    assert "Amount" not in event.fields
    assert "AccountId" not in event.fields
    assert event.fields["NextStep"] is None
    assert event.crm_event_id == "18098167"
    assert (
        event.dedupe_key == "000046c7-a642-11e2-c29b-229c6786473e:1:006xx0000000001AAA"
    )
    assert event.sequence == 11657372702432
    assert event.occurred_at == datetime(2023, 10, 4, 18, 35, 13, tzinfo=UTC)


def test_cdc_pubsub_changed_null_is_cleared():
    body = fixture_json("salesforce_cdc_opportunity_update_pubsub_decoded.json")
    body["payload"]["ChangeEventHeader"]["changedFields"].append("CloseDate")

    event = parse_cdc(json.dumps(body).encode())[0]

    assert "CloseDate" in event.fields
    assert event.fields["CloseDate"] is None


def test_cdc_pubsub_header_in_streaming_envelope():
    pubsub = fixture_json("salesforce_cdc_opportunity_update_pubsub_decoded.json")
    body = {"data": {"payload": pubsub["payload"], "event": {"replayId": 5}}}

    event = parse_cdc(json.dumps(body).encode())[0]

    assert "Amount" not in event.fields
    assert event.fields["NextStep"] is None
    assert event.crm_event_id == "5"


def test_cdc_header_never_in_fields():
    for name in (
        "salesforce_cdc_opportunity_create.json",
        "salesforce_cdc_opportunity_update_stage.json",
        "salesforce_cdc_opportunity_update_pubsub_decoded.json",
    ):
        event = parse_cdc(fixture_bytes(name))[0]
        assert "ChangeEventHeader" not in event.fields, name


def test_cdc_array_of_both_shapes():
    body = b"[%s,%s]" % (
        fixture_bytes("salesforce_cdc_opportunity_create.json"),
        fixture_bytes("salesforce_cdc_opportunity_update_pubsub_decoded.json"),
    )

    events = parse_cdc(body)

    assert [event.change_type for event in events] == ["create", "update"]
    assert [event.crm_event_id for event in events] == ["2142249", "18098167"]


def test_cdc_one_event_per_record_id():
    body = fixture_json("salesforce_cdc_opportunity_update_stage.json")
    header = body["data"]["payload"]["ChangeEventHeader"]
    header["recordIds"] = ["006xx0000000001AAA", "006xx0000000002AAA"]

    events = parse_cdc(json.dumps(body).encode())

    assert [event.record_id for event in events] == [
        "006xx0000000001AAA",
        "006xx0000000002AAA",
    ]
    assert events[1].dedupe_key == (
        "0000a62a-5497-10e0-dbe3-e99b71589a49:1:006xx0000000002AAA"
    )
    assert events[1].fields == events[0].fields


@pytest.mark.parametrize(
    ("change_type", "expected"), [("DELETE", "delete"), ("UNDELETE", "update")]
)
def test_cdc_delete_and_undelete(change_type, expected):
    body = fixture_json("salesforce_cdc_opportunity_update_stage.json")
    body["data"]["payload"]["ChangeEventHeader"]["changeType"] = change_type

    event = parse_cdc(json.dumps(body).encode())[0]

    assert event.change_type == expected


def test_cdc_delete_has_no_fields():
    body = fixture_json("salesforce_cdc_opportunity_update_stage.json")
    body["data"]["payload"]["ChangeEventHeader"]["changeType"] = "DELETE"

    event = parse_cdc(json.dumps(body).encode())[0]

    assert event.fields == {}


def test_cdc_gap_event_quarantined():
    body = fixture_json("salesforce_cdc_opportunity_update_stage.json")
    body["data"]["payload"]["ChangeEventHeader"]["changeType"] = "GAP_UPDATE"

    with pytest.raises(ParseError) as caught:
        parse_cdc(json.dumps(body).encode())

    assert caught.value.code == "gap_event"
    assert "GAP_UPDATE" in caught.value.message
    assert "006xx0000000001AAA" in caught.value.message


def test_cdc_unknown_change_type_rejected():
    body = fixture_json("salesforce_cdc_opportunity_update_stage.json")
    body["data"]["payload"]["ChangeEventHeader"]["changeType"] = "RENAME"

    with pytest.raises(ParseError) as caught:
        parse_cdc(json.dumps(body).encode())

    assert caught.value.code == "unsupported_event"


def test_cdc_missing_transaction_key_names_field():
    first = fixture_json("salesforce_cdc_opportunity_create.json")
    second = fixture_json("salesforce_cdc_opportunity_update_stage.json")
    del second["data"]["payload"]["ChangeEventHeader"]["transactionKey"]

    with pytest.raises(ParseError) as caught:
        parse_cdc(json.dumps([first, second]).encode())

    assert caught.value.code == "missing_field"
    assert "transactionKey" in caught.value.message
    assert "index 1" in caught.value.message


def test_cdc_missing_header_rejected():
    with pytest.raises(ParseError) as caught:
        parse_cdc(b'{"data": {"payload": {"Name": "x"}}}')

    assert caught.value.code == "missing_field"
    assert "ChangeEventHeader" in caught.value.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "empty_body"),
        (b'"an event"', "unexpected_shape"),
        (b'{"data": {"payload": ', "invalid_json"),
        (b'{"data": "\xff\xfe"}', "invalid_encoding"),
        (b"[" * 100000, "too_deep"),
        (b'{"replayId": 1}', "missing_field"),
        (b"[1]", "unexpected_shape"),
    ],
)
def test_cdc_unreadable_body_parse_error(body, code):
    with pytest.raises(ParseError) as caught:
        parse_cdc(body)

    assert caught.value.code == code


def test_cdc_truncated_fixture_invalid_json():
    body = fixture_bytes("salesforce_cdc_opportunity_create.json")

    with pytest.raises(ParseError) as caught:
        parse_cdc(body[: len(body) // 2])

    assert caught.value.code == "invalid_json"
    assert "line" in caught.value.message


# Outbound Messages: authenticity


def outbound_connector(secrets=(), **settings):
    return Connector(
        slug="sf-outbound",
        kind="salesforce_outbound",
        secrets=list(secrets),
        settings={"organization_id": ORGANIZATION_ID, **settings},
    )


def outbound_request(body=None, headers=None, verified=False):
    if body is None:
        body = fixture_bytes("salesforce_outbound_message_opportunity.xml")
    return make_request(body, headers, verified=verified, received_at=at_unix(NOW))


def test_outbound_organization_matches():
    outbound.verify(outbound_connector(), outbound_request())


def test_outbound_organization_15_character_form_matches():
    connector = outbound_connector(organization_id="00Dxx0000000001")

    outbound.verify(connector, outbound_request())


def test_outbound_organization_mismatch_rejected():
    connector = outbound_connector(organization_id="00Dxx0000000002EAA")

    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(connector, outbound_request())

    assert caught.value.code == "organization_mismatch"
    assert caught.value.status == 403
    assert ORGANIZATION_ID in caught.value.message


def test_outbound_organization_case_differs_rejected():
    # 15-character ids are case-sensitive.
    connector = outbound_connector(organization_id="00DXX0000000001")

    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(connector, outbound_request())

    assert caught.value.code == "organization_mismatch"


def test_outbound_organization_not_configured_rejected():
    connector = Connector(slug="sf-outbound", kind="salesforce_outbound", settings={})

    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(connector, outbound_request())

    assert caught.value.code == "organization_not_configured"
    assert caught.value.status == 403


def test_outbound_basic_auth_valid():
    connector = outbound_connector(secrets=["pw-FAKE"], username="salesforce")
    headers = {"Authorization": basic_auth("salesforce", "pw-FAKE")}

    outbound.verify(connector, outbound_request(headers=headers))


def test_outbound_basic_auth_rotation_valid():
    connector = outbound_connector(secrets=["pw-NEW", "pw-OLD"], username="salesforce")
    headers = {"Authorization": basic_auth("salesforce", "pw-OLD")}

    outbound.verify(connector, outbound_request(headers=headers))


def test_outbound_basic_auth_missing_rejected():
    connector = outbound_connector(secrets=["pw-FAKE"], username="salesforce")

    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(connector, outbound_request())

    assert caught.value.code == "auth_missing"
    assert caught.value.status == 401


def test_outbound_basic_auth_wrong_rejected():
    connector = outbound_connector(secrets=["pw-FAKE"], username="salesforce")
    headers = {"Authorization": basic_auth("salesforce", "pw-WRONG")}

    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(connector, outbound_request(headers=headers))

    assert caught.value.code == "auth_invalid"
    assert "pw-FAKE" not in caught.value.message


def test_outbound_verified_request_skips_checks():
    connector = outbound_connector(organization_id="00Dxx0000000002EAA")

    outbound.verify(connector, outbound_request(verified=True))


def test_outbound_not_xml_rejected():
    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(outbound_connector(), outbound_request(b'{"json": true}'))

    assert caught.value.code == "invalid_xml"
    assert caught.value.status == 400
    assert "line 1" in caught.value.message


def test_outbound_deep_xml_without_organization_rejected():
    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(outbound_connector(), outbound_request(b"<a>" * 100000))

    assert caught.value.code == "invalid_xml"


def test_outbound_entity_expansion_rejected():
    body = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>'
    )

    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(outbound_connector(), outbound_request(body))

    assert caught.value.code == "invalid_xml"


def test_outbound_well_formed_without_organization_rejected():
    body = b"<notifications><Notification/></notifications>"

    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(outbound_connector(), outbound_request(body))

    assert caught.value.code == "organization_missing"
    assert caught.value.status == 403


def test_outbound_empty_organization_rejected():
    body = fixture_bytes("salesforce_outbound_message_opportunity.xml").replace(
        b"<OrganizationId>00Dxx0000000001EAA</OrganizationId>",
        b"<OrganizationId></OrganizationId>",
    )

    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(outbound_connector(), outbound_request(body))

    assert caught.value.code == "organization_missing"


def test_outbound_truncated_from_organization_quarantined():
    body = fixture_bytes("salesforce_outbound_message_opportunity.xml")
    truncated = body[: body.index(b"<sf:Amount>1234.56")]

    outbound.verify(outbound_connector(), outbound_request(truncated))
    with pytest.raises(ParseError) as caught:
        outbound.parse(outbound_connector(), outbound_request(truncated))

    assert caught.value.code == "invalid_xml"
    assert "line" in caught.value.message


def test_outbound_truncated_from_other_organization_rejected():
    body = fixture_bytes("salesforce_outbound_message_opportunity.xml")
    truncated = body[: body.index(b"<sf:Amount>1234.56")]
    connector = outbound_connector(organization_id="00Dxx0000000002EAA")

    with pytest.raises(DeliveryRejected) as caught:
        outbound.verify(connector, outbound_request(truncated))

    assert caught.value.code == "organization_mismatch"


# Outbound Messages: parsing


def parse_outbound(body=None):
    return outbound.parse(outbound_connector(), outbound_request(body, verified=True))


def test_outbound_fixture_two_notifications():
    events = parse_outbound()

    assert len(events) == 2
    assert [event.object_type for event in events] == ["Opportunity", "Opportunity"]
    assert [event.record_id for event in events] == [
        "006xx0000000001AAA",
        "006xx0000000002AAA",
    ]
    assert [event.crm_event_id for event in events] == [
        "04lxx0000000001AAA",
        "04lxx0000000002AAA",
    ]
    assert [event.dedupe_key for event in events] == [
        "04lxx0000000001AAA",
        "04lxx0000000002AAA",
    ]
    assert [event.change_type for event in events] == ["update", "update"]
    assert [event.full_state for event in events] == [False, False]


def test_outbound_first_notification_fields():
    event = parse_outbound()[0]

    assert event.fields == {
        "Id": "006xx0000000001AAA",
        "AccountId": "001xx0000000001AAA",
        "Amount": "1234.56",
        "CloseDate": "2024-09-30",
        "CurrencyIsoCode": "EUR",
        "HasOpportunityLineItem": True,
        "IsClosed": True,
        "IsWon": True,
        "LastModifiedDate": "2024-09-03T09:56:05.000Z",
        "Name": "FAKE-Deal Example Widgets 2024-Q3",
        "OwnerId": "005xx0000000001AAA",
        "Probability": "100.0",
        "StageName": "Closed Won",
        "SystemModstamp": "2024-09-03T09:56:05.000Z",
    }
    assert event.occurred_at == datetime(2024, 9, 3, 9, 56, 5, tzinfo=UTC)


def test_outbound_second_notification_fields():
    event = parse_outbound()[1]

    assert event.fields["Amount"] == "45000.0"
    assert event.fields["IsClosed"] is False
    assert event.fields["IsWon"] is False
    assert event.fields["StageName"] == "Negotiation/Review"
    assert event.occurred_at == at_unix(NOW)


def test_outbound_raw_has_context_without_session():
    event = parse_outbound()[0]

    assert event.raw["OrganizationId"] == ORGANIZATION_ID
    assert event.raw["ActionId"] == "04kxx0000000001AAA"
    assert event.raw["NotificationId"] == "04lxx0000000001AAA"
    assert "SessionId" not in event.raw


def test_outbound_nil_field_is_none():
    body = fixture_bytes("salesforce_outbound_message_opportunity.xml").replace(
        b"<sf:CloseDate>2024-10-11</sf:CloseDate>",
        b'<sf:CloseDate>2024-10-11</sf:CloseDate><sf:NextStep xsi:nil="true"/>',
    )

    event = parse_outbound(body)[1]

    assert "NextStep" in event.fields
    assert event.fields["NextStep"] is None


def test_outbound_missing_record_id_names_position():
    body = fixture_bytes("salesforce_outbound_message_opportunity.xml").replace(
        b"<sf:Id>006xx0000000002AAA</sf:Id>", b""
    )

    with pytest.raises(ParseError) as caught:
        parse_outbound(body)

    assert caught.value.code == "missing_field"
    assert "index 1" in caught.value.message
    assert "sf:Id" in caught.value.message


def test_outbound_invalid_utf8_quarantined():
    body = fixture_bytes("salesforce_outbound_message_opportunity.xml").replace(
        b"Sample Backpacks", b"Sample \xff Backpacks"
    )

    with pytest.raises(ParseError) as caught:
        parse_outbound(body)

    assert caught.value.code == "invalid_xml"


def test_outbound_not_notifications_quarantined():
    body = b'<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"/>'

    with pytest.raises(ParseError) as caught:
        parse_outbound(body)

    assert caught.value.code == "unexpected_shape"


def test_outbound_empty_body_quarantined():
    with pytest.raises(ParseError) as caught:
        parse_outbound(b"")

    assert caught.value.code == "empty_body"


def test_outbound_accepted_response_is_ack():
    response = outbound.accepted_response(outbound_connector(), outbound_request(), {})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/xml; charset=utf-8"
    expected = ElementTree.canonicalize(
        fixture_bytes("salesforce_outbound_message_ack_response.xml").decode(),
        strip_text=True,
    )
    actual = ElementTree.canonicalize(response.content.decode(), strip_text=True)
    assert actual == expected
    root = ElementTree.fromstring(response.content)
    ack = root.find(f"{SOAP}Body/{OUTBOUND}notificationsResponse/{OUTBOUND}Ack")
    assert ack.text == "true"


def test_outbound_rejected_response_is_fault():
    error = DeliveryRejected("organization_mismatch", "Wrong <org> & id.", status=403)

    response = outbound.rejected_response(error)

    assert response.status_code == 403
    assert response["Content-Type"] == "text/xml; charset=utf-8"
    root = ElementTree.fromstring(response.content)
    fault = root.find(f"{SOAP}Body/{SOAP}Fault")
    assert fault.find("faultcode").text == "soapenv:Client"
    assert fault.find("faultstring").text == "Wrong <org> & id."
