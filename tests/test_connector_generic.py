import hashlib
import json
from datetime import UTC, datetime

import pytest

from syncflows.connectors import get_kind
from syncflows.connectors.base import DeliveryRejected, ParseError
from syncflows.models.connectors import Connector
from tests.crm_fixtures import at_unix, fixture_bytes, make_request, stripe_header

SECRET = "whsec_FAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKE"
VECTOR_HEADER = (
    "t=1718000000,v1=a11a626982bc4016720ec31d63d74f1c1564088363f66955d4caeca273af936c"
)
STRIPE_SETTINGS = {
    "event_id_path": "id",
    "object_type_path": "data.object.object",
    "record_id_path": "data.object.id",
    "occurred_at_path": "created",
    "fields_path": "data.object",
    "change_type_path": "type",
    "change_type_map": {"invoice.paid": "update", "invoice.created": "create"},
}
LINE_ITEM_SETTINGS = {
    "object_type_path": "type",
    "object_type_map": {"line_item.creation": "line_item", "deal.creation": "deal"},
    "record_id_paths": {"line_item": "line_item_id", "deal": "deal_id"},
    "change_type_path": "type",
    "change_type_map": {"line_item.creation": "create", "deal.creation": "create"},
    "full_state": True,
    "parents": {"line_item": {"type": "deal", "id_path": "deal_id"}},
}
HELD_BACK_LINE_ITEMS = [
    {
        "type": "line_item.creation",
        "line_item_id": "700000021",
        "deal_id": "900000007",
        "sku": "FAKE-SKU-100",
        "quantity": 2,
        "unit_price": "500.00",
        "shipment": "SHIP-A",
    },
    {
        "type": "line_item.creation",
        "line_item_id": "700000022",
        "deal_id": "900000007",
        "sku": "FAKE-SKU-200",
        "quantity": 1,
        "unit_price": "234.56",
        "shipment": "SHIP-B",
    },
    {
        "type": "deal.creation",
        "deal_id": "900000007",
        "currency": "EUR",
        "dealstage": "closedwon",
    },
]

kind = get_kind("generic")


def make_connector(settings=None, secrets=(SECRET,)):
    return Connector(
        slug="generic",
        kind="generic",
        secrets=list(secrets),
        settings=STRIPE_SETTINGS if settings is None else settings,
    )


def stripe_request(body=None, header=VECTOR_HEADER, now=1718000000):
    if body is None:
        body = fixture_bytes("stripe_signature_testvector_body.txt")
    headers = {"X-Meshline-Signature": header} if header else {}
    return make_request(body, headers, received_at=at_unix(now))


def parse_json(value, settings, received_at=None):
    body = json.dumps(value).encode()
    request = make_request(body, verified=True, received_at=received_at)
    return kind.parse(make_connector(settings), request)


# Signatures


def test_signature_documented_vector_valid():
    kind.verify(make_connector(), stripe_request())


def test_signature_helper_matches_vector():
    body = fixture_bytes("stripe_signature_testvector_body.txt")

    assert stripe_header(SECRET, 1718000000, body) == VECTOR_HEADER


def test_signature_wrong_secret_rejected():
    connector = make_connector(secrets=["whsec_OTHER"])

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(connector, stripe_request())

    assert caught.value.code == "signature_invalid"
    assert caught.value.status == 401
    assert "whsec_OTHER" not in caught.value.message
    assert "'generic'" in caught.value.message


def test_signature_tampered_body_rejected():
    body = fixture_bytes("stripe_signature_testvector_body.txt").replace(
        b"123456", b"999999"
    )

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), stripe_request(body))

    assert caught.value.code == "signature_invalid"


def test_signature_expired_rejected():
    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), stripe_request(now=1718000301))

    assert caught.value.code == "signature_expired"


def test_signature_at_tolerance_edge_valid():
    kind.verify(make_connector(), stripe_request(now=1718000300))


def test_signature_missing_rejected():
    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), stripe_request(header=None))

    assert caught.value.code == "signature_missing"


@pytest.mark.parametrize(
    "header",
    [
        "v1=abc",
        "t=1718000000",
        "t=soon,v1=abc",
        "t=\u0661\u0662,v1=abc",
        "garbage",
        "t=1718000000,v1",
    ],
)
def test_signature_malformed_rejected(header):
    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), stripe_request(header=header))

    assert caught.value.code == "signature_malformed"


def test_signature_non_ascii_header_rejected():
    header = "t=1718000000,v1=\u00e4\u00e4"

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), stripe_request(header=header))

    assert caught.value.code == "signature_invalid"


def test_signature_rotation_second_secret_valid():
    connector = make_connector(secrets=["whsec_NEWNEWNEW", SECRET])

    kind.verify(connector, stripe_request())


def test_verified_request_skips_signature():
    body = fixture_bytes("stripe_signature_testvector_body.txt")

    kind.verify(make_connector(), make_request(body, verified=True))


# Parsing by paths


def test_stripe_event_parsed_by_paths():
    body = fixture_bytes("stripe_signature_testvector_body.txt")

    events = kind.parse(make_connector(), make_request(body, verified=True))

    assert len(events) == 1
    event = events[0]
    assert event.crm_event_id == "evt_FAKE0000000001"
    assert event.dedupe_key == "evt_FAKE0000000001"
    assert event.event_type == "invoice"
    assert event.object_type == "invoice"
    assert event.record_id == "in_FAKE0000000001"
    assert event.change_type == "update"
    assert event.occurred_at == datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)
    assert event.sequence is None
    assert event.full_state is False
    assert event.fields == {
        "id": "in_FAKE0000000001",
        "object": "invoice",
        "currency": "eur",
        "amount_paid": 123456,
    }


def test_held_back_line_items_get_parent():
    received_at = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)

    events = parse_json(HELD_BACK_LINE_ITEMS, LINE_ITEM_SETTINGS, received_at)

    assert [event.object_type for event in events] == ["line_item", "line_item", "deal"]
    assert [event.record_id for event in events] == [
        "700000021",
        "700000022",
        "900000007",
    ]
    assert [(event.parent_type, event.parent_id) for event in events] == [
        ("deal", "900000007"),
        ("deal", "900000007"),
        ("", ""),
    ]
    assert [event.change_type for event in events] == ["create"] * 3
    assert [event.event_type for event in events] == [
        "line_item.creation",
        "line_item.creation",
        "deal.creation",
    ]
    assert [event.sequence for event in events] == [0, 1, 2]
    assert [event.occurred_at for event in events] == [received_at] * 3
    assert [event.full_state for event in events] == [True] * 3


def test_held_back_line_item_fields_keep_strings():
    events = parse_json(HELD_BACK_LINE_ITEMS, LINE_ITEM_SETTINGS)

    assert events[0].fields == HELD_BACK_LINE_ITEMS[0]
    assert events[1].fields["unit_price"] == "234.56"
    assert events[2].fields["currency"] == "EUR"


def test_dedupe_key_is_canonical_hash_without_event_id():
    events = parse_json(HELD_BACK_LINE_ITEMS, LINE_ITEM_SETTINGS)
    canonical = json.dumps(
        HELD_BACK_LINE_ITEMS[2], sort_keys=True, separators=(",", ":")
    ).encode()

    assert events[2].dedupe_key == "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert events[2].crm_event_id == ""
    assert len({event.dedupe_key for event in events}) == 3


def test_dedupe_key_ignores_key_order():
    reordered = dict(reversed(list(HELD_BACK_LINE_ITEMS[0].items())))

    events = parse_json([HELD_BACK_LINE_ITEMS[0], reordered], LINE_ITEM_SETTINGS)

    assert events[0].dedupe_key == events[1].dedupe_key


def test_decimal_amount_kept_as_sent():
    event = {"id": "e1", "kind": "deal", "deal": {"id": 5, "amount": 1234.50}}
    settings = {
        "event_id_path": "id",
        "object_type": "deal",
        "record_id_path": "deal.id",
        "fields_path": "deal",
    }
    body = json.dumps(event).encode().replace(b"1234.5", b"1234.50")

    parsed = kind.parse(make_connector(settings), make_request(body, verified=True))

    assert parsed[0].fields == {"id": 5, "amount": "1234.50"}
    assert parsed[0].record_id == "5"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1718000000, datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)),
        (1718000000123, datetime(2024, 6, 10, 6, 13, 20, 123000, tzinfo=UTC)),
        ("2024-06-10T08:13:20+02:00", datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)),
        ("2024-06-10T06:13:20Z", datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)),
        ("2024-06-10T06:13:20", datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)),
        ("1718000000", datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)),
    ],
)
def test_occurred_at_formats(value, expected):
    settings = {"object_type": "deal", "record_id_path": "id", "occurred_at_path": "at"}

    event = parse_json({"id": 1, "at": value}, settings)[0]

    assert event.occurred_at == expected


def test_occurred_at_decimal_seconds():
    settings = {"object_type": "deal", "record_id_path": "id", "occurred_at_path": "at"}
    body = b'{"id": 1, "at": 1718000000.25}'

    event = kind.parse(make_connector(settings), make_request(body, verified=True))[0]

    assert event.occurred_at == datetime(2024, 6, 10, 6, 13, 20, 250000, tzinfo=UTC)


def test_path_with_array_index():
    settings = {"object_type": "deal", "record_id_path": "deals.1.id"}

    event = parse_json({"deals": [{"id": "a"}, {"id": "b"}]}, settings)[0]

    assert event.record_id == "b"


def test_merged_ids_path():
    settings = {
        "object_type": "deal",
        "record_id_path": "id",
        "change_type_path": "action",
        "merged_ids_path": "merged",
    }

    event = parse_json({"id": 1, "action": "merge", "merged": [2, "3"]}, settings)[0]

    assert event.change_type == "merge"
    assert event.merged_ids == ["2", "3"]


def test_fields_are_nfc_normalised():
    settings = {"object_type": "company", "record_id_path": "id"}

    event = parse_json({"id": 1, "name": "Ylla\u0308"}, settings)[0]

    assert event.fields["name"] == "Yll\u00e4"


CPQ_SETTINGS = {
    "object_type": "SBQQ__Quote__c",
    "record_id_path": "record.Id",
    "full_state": True,
    "parents": {
        "SBQQ__Quote__c": {
            "type": "Opportunity",
            "id_path": "record.SBQQ__Opportunity2__c",
            "required": False,
        }
    },
}


def parse_fixture(name, settings):
    request = make_request(fixture_bytes(name), verified=True)
    return kind.parse(make_connector(settings), request)


def test_cpq_discounted_quote_parsed():
    events = parse_fixture(
        "salesforce_cpq_quote_discounted_lines_SYNTHETIC.json", CPQ_SETTINGS
    )

    assert len(events) == 1
    event = events[0]
    assert event.object_type == "SBQQ__Quote__c"
    assert event.record_id == "a0pxx0000000002AAA"
    assert (event.parent_type, event.parent_id) == ("Opportunity", "006xx0000000001AAA")
    assert event.full_state is True
    assert event.dedupe_key.startswith("sha256:")
    assert event.fields["netTotal"] == "1234.56"
    assert event.fields["record"]["SBQQ__ListAmount__c"] == "1346.64"
    lines = event.fields["lineItems"]
    assert [line["record"]["SBQQ__NetTotal__c"] for line in lines] == [
        "899.91",
        "331.65",
        "3.00",
    ]
    assert lines[0]["record"]["SBQQ__CustomerPrice__c"] == "89.991"
    assert lines[1]["record"]["SBQQ__Discount__c"] is None


def test_cpq_quote_without_opportunity_has_no_parent():
    events = parse_fixture(
        "salesforce_cpq_quotemodel_calculate_example.json", CPQ_SETTINGS
    )

    assert events[0].record_id == "a0pxx0000000001AAA"
    assert events[0].parent_type == ""
    assert events[0].parent_id == ""
    assert events[0].fields["netNonSegmentTotal"] == "100.0000"


def test_cpq_required_parent_missing_rejected():
    settings = {
        **CPQ_SETTINGS,
        "parents": {
            "SBQQ__Quote__c": {
                "type": "Opportunity",
                "id_path": "record.SBQQ__Opportunity2__c",
            }
        },
    }

    with pytest.raises(ParseError) as caught:
        parse_fixture("salesforce_cpq_quotemodel_calculate_example.json", settings)

    assert caught.value.code == "missing_field"
    assert "'record.SBQQ__Opportunity2__c'" in caught.value.message


# Settings and bodies that cannot be read


def test_missing_record_path_names_path_and_position():
    events = [dict(item) for item in HELD_BACK_LINE_ITEMS]
    del events[1]["line_item_id"]

    with pytest.raises(ParseError) as caught:
        parse_json(events, LINE_ITEM_SETTINGS)

    assert caught.value.code == "missing_field"
    assert "'line_item_id'" in caught.value.message
    assert "index 1" in caught.value.message


def test_missing_parent_id_names_path():
    events = [dict(item) for item in HELD_BACK_LINE_ITEMS]
    del events[0]["deal_id"]

    with pytest.raises(ParseError) as caught:
        parse_json(events, LINE_ITEM_SETTINGS)

    assert caught.value.code == "missing_field"
    assert "'deal_id'" in caught.value.message
    assert "index 0" in caught.value.message


def test_missing_event_id_rejected():
    settings = {**STRIPE_SETTINGS}
    body = json.loads(fixture_bytes("stripe_signature_testvector_body.txt"))
    del body["id"]

    with pytest.raises(ParseError) as caught:
        parse_json(body, settings)

    assert caught.value.code == "missing_field"
    assert "'id'" in caught.value.message


def test_unmapped_object_type_rejected():
    events = [*HELD_BACK_LINE_ITEMS, {"type": "contact.creation", "deal_id": "1"}]

    with pytest.raises(ParseError) as caught:
        parse_json(events, LINE_ITEM_SETTINGS)

    assert caught.value.code == "unsupported_event"
    assert "contact.creation" in caught.value.message
    assert "index 3" in caught.value.message


def test_unmapped_change_type_rejected():
    body = json.loads(fixture_bytes("stripe_signature_testvector_body.txt"))
    body["type"] = "invoice.voided"

    with pytest.raises(ParseError) as caught:
        parse_json(body, STRIPE_SETTINGS)

    assert caught.value.code == "unsupported_event"
    assert "invoice.voided" in caught.value.message


def test_record_id_object_rejected():
    settings = {"object_type": "deal", "record_id_path": "id"}

    with pytest.raises(ParseError) as caught:
        parse_json({"id": {"nested": 1}}, settings)

    assert caught.value.code == "invalid_field"


def test_fields_path_not_object_rejected():
    settings = {"object_type": "deal", "record_id_path": "id", "fields_path": "id"}

    with pytest.raises(ParseError) as caught:
        parse_json({"id": 1}, settings)

    assert caught.value.code == "invalid_field"


def test_bad_occurred_at_rejected():
    settings = {"object_type": "deal", "record_id_path": "id", "occurred_at_path": "at"}

    with pytest.raises(ParseError) as caught:
        parse_json({"id": 1, "at": "last tuesday"}, settings)

    assert caught.value.code == "invalid_field"
    assert "'at'" in caught.value.message


@pytest.mark.parametrize(
    "connector_settings",
    [
        {"record_id_path": "id"},
        {"object_type": "deal"},
        {"object_type": "deal", "record_id_path": 5},
        {"object_type": "deal", "record_id_path": "id", "full_state": "yes"},
        {"object_type": "deal", "record_id_path": "id", "parents": {"deal": "x"}},
        {"object_type": "deal", "record_id_paths": {"line_item": "id"}},
    ],
)
def test_invalid_settings_rejected(connector_settings):
    with pytest.raises(ParseError) as caught:
        parse_json({"id": 1}, connector_settings)

    assert caught.value.code == "invalid_settings"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "empty_body"),
        (b'"text"', "unexpected_shape"),
        (b"[1, 2]", "unexpected_shape"),
        (b'{"id": ', "invalid_json"),
        (b'{"id": "\xc3\x28"}', "invalid_encoding"),
        (b"[" * 100000, "too_deep"),
        (b'{"id": Infinity}', "invalid_json"),
    ],
)
def test_unreadable_body_parse_error(body, code):
    with pytest.raises(ParseError) as caught:
        kind.parse(make_connector(), make_request(body, verified=True))

    assert caught.value.code == code


def test_deep_but_readable_json_rejected():
    settings = {"object_type": "deal", "record_id_path": "id"}
    body = b'{"id": 1, "x": ' + b"[" * 990 + b"]" * 990 + b"}"

    with pytest.raises(ParseError) as caught:
        kind.parse(make_connector(settings), make_request(body, verified=True))

    assert caught.value.code == "too_deep"
