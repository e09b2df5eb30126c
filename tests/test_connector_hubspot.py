import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from syncflows.connectors import get_kind
from syncflows.connectors.base import DeliveryRejected, ParseError
from syncflows.models.connectors import Connector
from tests.crm_fixtures import fixture_bytes, make_request

SECRET = "fake-client-secret-00000000-0000-0000-0000-000000000000"
URI = "https://erp-sync.example.com/webhooks/hubspot"
VECTOR_SIGNATURE = "C/6UTwr39j9fWqM7Wbe3cdNKrXEnsE7lD+p0jXfTwGk="

# The \u00e4 is six literal characters in the body, as HubSpot sent it.
UNICODE_BODY = (
    rb'[{"eventId":100000021,"subscriptionId":200001,"portalId":1234567,'
    rb'"appId":300001,"occurredAt":1718000100000,'
    rb'"subscriptionType":"company.propertyChange","attemptNumber":0,'
    rb'"objectId":800000001,"propertyName":"name",'
    rb'"propertyValue":"Yll\u00e4 Esimerkki Oy (FAKE)","changeSource":"CRM_UI"}]'
)
UNICODE_SIGNATURE = "qzI7yvDSnBE0VotGbNajmzSJcVmzApHbdrj7kywTT50="
# What a verifier that re-serialises the parsed JSON would expect.
RESERIALISED_SIGNATURE = "9hXD8Qj9Sz7MVqyayFiruFv6R5rv3fEX+usHDDW9yJo="

kind = get_kind("hubspot")


def make_connector(secrets=(SECRET,), **settings):
    return Connector(
        slug="hubspot",
        kind="hubspot",
        secrets=list(secrets),
        settings={"public_url": URI, **settings},
    )


def sign(secret, body, timestamp, uri=URI, method="POST"):
    source = method.encode() + uri.encode() + body + str(timestamp).encode()
    digest = hmac.new(secret.encode(), source, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signed_request(body, timestamp_ms, signature=None, now_ms=None, **kwargs):
    headers = {"X-HubSpot-Request-Timestamp": str(timestamp_ms)}
    headers["X-HubSpot-Signature-v3"] = signature or sign(SECRET, body, timestamp_ms)
    now_ms = timestamp_ms + 1000 if now_ms is None else now_ms
    received_at = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    return make_request(body, headers, received_at=received_at, **kwargs)


def parse_body(body: bytes):
    return kind.parse(make_connector(), make_request(body, verified=True))


# Signatures


def test_signature_documented_vector_valid():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = signed_request(body, 1718000001000, VECTOR_SIGNATURE)

    kind.verify(make_connector(), request)


def test_signature_unicode_escape_raw_bytes_valid():
    request = signed_request(
        UNICODE_BODY, 1718000101000, UNICODE_SIGNATURE, now_ms=1718000102000
    )

    kind.verify(make_connector(), request)


def test_signature_reserialised_body_rejected():
    request = signed_request(
        UNICODE_BODY, 1718000101000, RESERIALISED_SIGNATURE, now_ms=1718000102000
    )

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "signature_invalid"
    assert caught.value.status == 401


def test_unicode_company_name_parsed_nfc():
    events = parse_body(UNICODE_BODY)

    assert len(events) == 1
    assert events[0].object_type == "company"
    assert events[0].record_id == "800000001"
    assert events[0].fields == {"name": "Yll\u00e4 Esimerkki Oy (FAKE)"}


def test_decomposed_text_normalised_to_nfc():
    body = UNICODE_BODY.replace(rb"Yll\u00e4", rb"Ylla\u0308")

    events = parse_body(body)

    assert events[0].fields["name"] == "Yll\u00e4 Esimerkki Oy (FAKE)"


def test_signature_wrong_secret_rejected():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    signature = sign("another-secret", body, 1718000001000)
    request = signed_request(body, 1718000001000, signature)

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "signature_invalid"
    assert "X-HubSpot-Signature-v3" in caught.value.message
    assert "'hubspot'" in caught.value.message
    assert SECRET not in caught.value.message


def test_signature_tampered_body_rejected():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    tampered = body.replace(b"closedwon", b"closedlost")
    request = signed_request(tampered, 1718000001000, VECTOR_SIGNATURE)

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "signature_invalid"


def test_signature_expired_timestamp_rejected():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = signed_request(
        body, 1718000001000, VECTOR_SIGNATURE, now_ms=1718000001000 + 301_000
    )

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "signature_expired"
    assert "301 s old" in caught.value.message


def test_signature_at_window_edge_valid():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = signed_request(
        body, 1718000001000, VECTOR_SIGNATURE, now_ms=1718000001000 + 300_000
    )

    kind.verify(make_connector(), request)


def test_signature_future_timestamp_rejected():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = signed_request(
        body, 1718000001000, VECTOR_SIGNATURE, now_ms=1718000001000 - 301_000
    )

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "timestamp_in_future"


def test_signature_header_missing_rejected():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = make_request(body, {"X-HubSpot-Request-Timestamp": "1718000001000"})

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "signature_missing"
    assert caught.value.status == 401


def test_timestamp_header_missing_rejected():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = make_request(body, {"X-HubSpot-Signature-v3": VECTOR_SIGNATURE})

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "timestamp_missing"


@pytest.mark.parametrize("timestamp", ["yesterday", "\u0661\u0662\u0663", "-5"])
def test_timestamp_not_a_number_rejected(timestamp):
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = signed_request(body, timestamp, VECTOR_SIGNATURE, now_ms=1718000002000)

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "timestamp_invalid"


def test_signature_rotation_second_secret_valid():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = signed_request(body, 1718000001000, VECTOR_SIGNATURE)
    connector = make_connector(secrets=["new-secret-not-yet-in-hubspot", SECRET])

    kind.verify(connector, request)


def test_no_secret_configured_rejected():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = signed_request(body, 1718000001000, VECTOR_SIGNATURE)

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(secrets=()), request)

    assert caught.value.code == "secret_missing"


def test_signature_uses_request_url_without_public_url():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    connector = Connector(slug="hubspot", kind="hubspot", secrets=[SECRET], settings={})
    request = signed_request(body, 1718000001000, VECTOR_SIGNATURE, url=URI)

    kind.verify(connector, request)


def test_signature_public_url_overrides_proxy_url():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    request = signed_request(
        body,
        1718000001000,
        VECTOR_SIGNATURE,
        url="http://10.0.0.5:8000/webhooks/hubspot",
    )

    kind.verify(make_connector(), request)


def test_signature_proxy_url_without_public_url_rejected():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    connector = Connector(slug="hubspot", kind="hubspot", secrets=[SECRET], settings={})
    request = signed_request(
        body,
        1718000001000,
        VECTOR_SIGNATURE,
        url="http://10.0.0.5:8000/webhooks/hubspot",
    )

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(connector, request)

    assert caught.value.code == "signature_invalid"


def test_signature_decoded_reserved_characters_valid():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")
    public_url = URI + "?portal=1234567%3Aeu"
    signature = sign(SECRET, body, 1718000001000, uri=URI + "?portal=1234567:eu")
    request = signed_request(body, 1718000001000, signature)

    kind.verify(make_connector(public_url=public_url), request)


def test_verified_request_skips_signature():
    body = fixture_bytes("hubspot_signature_v3_testvector_body.txt")

    kind.verify(make_connector(), make_request(body, verified=True))


# Parsing the documented batch


def test_deal_batch_fixture_parsed():
    events = parse_body(fixture_bytes("hubspot_webhook_v3_deal_events.json"))

    assert len(events) == 5
    assert [event.object_type for event in events] == ["deal"] * 5
    assert [event.change_type for event in events] == [
        "update",
        "update",
        "create",
        "merge",
        "update",
    ]
    assert [event.record_id for event in events] == [
        "900000001",
        "900000001",
        "900000002",
        "900000001",
        "900000001",
    ]


def test_deal_stage_change_fields():
    event = parse_body(fixture_bytes("hubspot_webhook_v3_deal_events.json"))[0]

    assert event.crm_event_id == "100000001"
    assert event.dedupe_key == "200001:100000001:1718000000000:900000001:dealstage"
    assert event.event_type == "deal.propertyChange"
    assert event.fields == {"dealstage": "closedwon"}
    assert event.full_state is False
    assert event.occurred_at == datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)
    assert event.sequence == 1718000000000
    assert event.merged_ids == []
    assert event.raw["sourceId"] == "userId:4000001"


def test_deal_amount_change_is_string():
    event = parse_body(fixture_bytes("hubspot_webhook_v3_deal_events.json"))[1]

    assert event.fields == {"amount": "1234.56"}
    assert event.dedupe_key == "200002:100000002:1717999999500:900000001:amount"
    assert event.occurred_at == datetime(2024, 6, 10, 6, 13, 19, 500000, tzinfo=UTC)


def test_deal_creation_has_no_fields():
    event = parse_body(fixture_bytes("hubspot_webhook_v3_deal_events.json"))[2]

    assert event.change_type == "create"
    assert event.fields == {}
    assert event.full_state is False
    assert event.dedupe_key == "200003:100000003:1717999990000:900000002:"
    assert event.occurred_at == datetime(2024, 6, 10, 6, 13, 10, tzinfo=UTC)


def test_deal_merge_primary_and_merged_ids():
    event = parse_body(fixture_bytes("hubspot_webhook_v3_deal_events.json"))[3]

    assert event.change_type == "merge"
    assert event.record_id == "900000001"
    assert event.merged_ids == ["900000003"]
    assert event.raw["newObjectId"] == 900000009
    assert event.fields == {}
    assert event.sequence == 1718000005000


def test_redelivery_shares_dedupe_key():
    events = parse_body(fixture_bytes("hubspot_webhook_v3_deal_events.json"))

    assert events[4].raw["attemptNumber"] == 3
    assert events[4].dedupe_key == events[0].dedupe_key


def test_empty_property_value_means_cleared():
    body = (
        b'[{"eventId":1,"subscriptionId":2,"occurredAt":1718000000000,'
        b'"subscriptionType":"line_item.propertyChange","objectId":3,'
        b'"propertyName":"discount","propertyValue":""}]'
    )

    event = parse_body(body)[0]

    assert event.object_type == "line_item"
    assert event.fields == {"discount": None}


def test_deletion_maps_to_delete():
    body = (
        b'[{"eventId":1,"subscriptionId":2,"occurredAt":1718000000000,'
        b'"subscriptionType":"product.deletion","objectId":3}]'
    )

    event = parse_body(body)[0]

    assert event.object_type == "product"
    assert event.change_type == "delete"
    assert event.record_id == "3"


# Bodies that cannot be read


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "empty_body"),
        (b"  \n", "empty_body"),
        (b'{"eventId": 1}', "unexpected_shape"),
        (b'[{"eventId": 1,', "invalid_json"),
        (b"[{'eventId': 1}]", "invalid_json"),
        (b'[{"propertyValue": "Yll\xe4"}]', "invalid_encoding"),
        (b"[" * 100000, "too_deep"),
        (b"[" * 100000 + b"]" * 100000, "too_deep"),
        (b'["not an event"]', "unexpected_shape"),
        (b"[NaN]", "invalid_json"),
    ],
)
def test_unreadable_body_parse_error(body, code):
    with pytest.raises(ParseError) as caught:
        parse_body(body)

    assert caught.value.code == code


def test_missing_object_id_names_position():
    body = (
        b'[{"eventId":1,"subscriptionId":2,"occurredAt":1718000000000,'
        b'"subscriptionType":"deal.creation","objectId":3},'
        b'{"eventId":4,"subscriptionId":2,"occurredAt":1718000000000,'
        b'"subscriptionType":"deal.creation"}]'
    )

    with pytest.raises(ParseError) as caught:
        parse_body(body)

    assert caught.value.code == "missing_field"
    assert "index 1" in caught.value.message
    assert "objectId" in caught.value.message


def test_merge_without_merged_ids_rejected():
    body = (
        b'[{"eventId":1,"subscriptionId":2,"occurredAt":1718000000000,'
        b'"subscriptionType":"deal.merge","objectId":3,"primaryObjectId":4}]'
    )

    with pytest.raises(ParseError) as caught:
        parse_body(body)

    assert caught.value.code == "missing_field"
    assert "mergedObjectIds" in caught.value.message


def test_unknown_subscription_type_rejected():
    body = (
        b'[{"eventId":1,"subscriptionId":2,"occurredAt":1718000000000,'
        b'"subscriptionType":"contact.associationChange","objectId":3}]'
    )

    with pytest.raises(ParseError) as caught:
        parse_body(body)

    assert caught.value.code == "unsupported_event"
    assert "contact.associationChange" in caught.value.message


def test_occurred_at_string_rejected():
    body = (
        b'[{"eventId":1,"subscriptionId":2,"occurredAt":"2024-06-10",'
        b'"subscriptionType":"deal.creation","objectId":3}]'
    )

    with pytest.raises(ParseError) as caught:
        parse_body(body)

    assert caught.value.code == "invalid_field"
    assert "occurredAt" in caught.value.message


def test_missing_subscription_id_still_parsed():
    body = (
        b'[{"eventId":100000010,"occurredAt":1718000001000,'
        b'"subscriptionType":"deal.propertyChange","objectId":900000001,'
        b'"propertyName":"dealstage","propertyValue":"contractsent"}]'
    )

    event = parse_body(body)[0]

    assert event.dedupe_key == ":100000010:1718000001000:900000001:dealstage"
    assert event.fields == {"dealstage": "contractsent"}


def test_empty_batch_gives_no_events():
    assert parse_body(b"[]") == []


def test_same_event_id_other_deal_not_duplicate():
    # HubSpot does not promise unique eventIds: the same id, subscription and
    # time on two deals are two changes.
    body = (
        b'[{"eventId":300000001,"subscriptionId":555,"occurredAt":1718000001000,'
        b'"subscriptionType":"deal.propertyChange","objectId":900000301,'
        b'"propertyName":"dealstage","propertyValue":"closedwon"},'
        b'{"eventId":300000001,"subscriptionId":555,"occurredAt":1718000001000,'
        b'"subscriptionType":"deal.propertyChange","objectId":900000302,'
        b'"propertyName":"dealstage","propertyValue":"closedwon"}]'
    )

    first, second = parse_body(body)

    assert first.dedupe_key != second.dedupe_key
