import copy
import json
from datetime import UTC, datetime

import pytest

from syncflows.connectors import get_kind
from syncflows.connectors.base import DeliveryRejected, ParseError
from syncflows.models.connectors import Connector
from tests.crm_fixtures import basic_auth, fixture_bytes, make_request

PASSWORD = "pipedrive-pw-FAKE"
USERNAME = "meshline"

kind = get_kind("pipedrive")


def make_connector(secrets=(PASSWORD,), username=USERNAME):
    return Connector(
        slug="pipedrive",
        kind="pipedrive",
        secrets=list(secrets),
        settings={"username": username},
    )


def parse_body(body: bytes):
    return kind.parse(make_connector(), make_request(body, verified=True))


def parse_json(value):
    return parse_body(json.dumps(value).encode())[0]


def v1_fixture():
    return json.loads(fixture_bytes("pipedrive_webhook_v1_updated_deal.json"))


def v2_fixture():
    return json.loads(fixture_bytes("pipedrive_webhook_v2_change_deal.json"))


# Basic auth


def authorised(user=USERNAME, password=PASSWORD):
    body = fixture_bytes("pipedrive_webhook_v1_updated_deal.json")
    return make_request(body, {"Authorization": basic_auth(user, password)})


def test_basic_auth_valid():
    kind.verify(make_connector(), authorised())


def test_basic_auth_rotation_second_password_valid():
    connector = make_connector(secrets=["pipedrive-pw-NEW", PASSWORD])

    kind.verify(connector, authorised())


def test_basic_auth_missing_rejected():
    request = make_request(fixture_bytes("pipedrive_webhook_v1_updated_deal.json"))

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "auth_missing"
    assert caught.value.status == 401
    assert "'pipedrive'" in caught.value.message


def test_basic_auth_other_scheme_is_missing():
    body = fixture_bytes("pipedrive_webhook_v1_updated_deal.json")
    request = make_request(body, {"Authorization": "Bearer abc"})

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "auth_missing"


def test_basic_auth_wrong_password_rejected():
    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), authorised(password="wrong"))

    assert caught.value.code == "auth_invalid"
    assert caught.value.status == 401
    assert PASSWORD not in caught.value.message


def test_basic_auth_wrong_user_rejected():
    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), authorised(user="someone"))

    assert caught.value.code == "auth_invalid"


def test_basic_auth_garbage_token_rejected():
    body = fixture_bytes("pipedrive_webhook_v1_updated_deal.json")
    request = make_request(body, {"Authorization": "Basic !!!not-base64"})

    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(), request)

    assert caught.value.code == "auth_invalid"


def test_basic_auth_without_password_configured_rejected():
    with pytest.raises(DeliveryRejected) as caught:
        kind.verify(make_connector(secrets=()), authorised())

    assert caught.value.code == "secret_missing"


def test_verified_request_skips_auth():
    body = fixture_bytes("pipedrive_webhook_v1_updated_deal.json")

    kind.verify(make_connector(), make_request(body, verified=True))


# Webhooks v1


def test_v1_updated_deal_parsed():
    events = parse_body(fixture_bytes("pipedrive_webhook_v1_updated_deal.json"))

    assert len(events) == 1
    event = events[0]
    assert event.object_type == "deal"
    assert event.record_id == "9"
    assert event.change_type == "update"
    assert event.event_type == "updated.deal"
    assert event.crm_event_id == ""
    assert (
        event.dedupe_key == "example.pipedrive.com:deal:9:updated:2025-02-17 21:22:41"
    )
    assert event.occurred_at == datetime(2025, 2, 17, 21, 22, 41, 322662, tzinfo=UTC)
    assert event.sequence == 1739827361322662
    assert event.full_state is True


def test_v1_fields_are_current_with_string_amounts():
    event = parse_body(fixture_bytes("pipedrive_webhook_v1_updated_deal.json"))[0]

    assert event.fields["value"] == "1234.56"
    assert event.fields["weighted_value"] == "1234.56"
    assert event.fields["status"] == "won"
    assert event.fields["stage_id"] == 5
    assert event.fields["lost_reason"] is None
    assert event.fields["formatted_value"] == "€1,234.56"
    assert event.fields.keys() == v1_fixture()["current"].keys()
    assert len(event.fields) == 31


def test_v1_previous_is_previous_object():
    event = parse_body(fixture_bytes("pipedrive_webhook_v1_updated_deal.json"))[0]

    assert event.previous["status"] == "open"
    assert event.previous["stage_id"] == 4
    assert event.previous["weighted_value"] == "740.74"
    assert event.previous["won_time"] is None


def test_v1_three_webhook_registrations_one_dedupe_key():
    deliveries = []
    for webhook_id in ("111111", "111112", "111113"):
        body = v1_fixture()
        body["meta"]["webhook_id"] = webhook_id
        deliveries.append(body)

    keys = {parse_json(body).dedupe_key for body in deliveries}

    assert keys == {"example.pipedrive.com:deal:9:updated:2025-02-17 21:22:41"}


def test_v1_different_change_different_key():
    first = v1_fixture()
    second = copy.deepcopy(first)
    second["current"]["update_time"] = "2025-02-17 21:25:00"

    assert parse_json(first).dedupe_key != parse_json(second).dedupe_key


@pytest.mark.parametrize(
    ("action", "expected"),
    [("added", "create"), ("updated", "update"), ("deleted", "delete")],
)
def test_v1_action_mapping(action, expected):
    body = v1_fixture()
    body["meta"]["action"] = action

    assert parse_json(body).change_type == expected


def test_v1_deleted_without_current():
    body = v1_fixture()
    body["meta"]["action"] = "deleted"
    body["current"] = None

    event = parse_json(body)

    assert event.change_type == "delete"
    assert event.fields == {}
    assert event.full_state is False
    assert event.dedupe_key == "example.pipedrive.com:deal:9:deleted:1739827361322662"


def test_v1_merged_ids_from_current():
    body = v1_fixture()
    body["meta"]["action"] = "merged"
    body["current"]["merged_ids"] = [12, 13]

    event = parse_json(body)

    assert event.change_type == "merge"
    assert event.record_id == "9"
    assert event.merged_ids == ["12", "13"]


def test_v1_merged_ids_from_previous_id():
    body = v1_fixture()
    body["meta"]["action"] = "merged"
    body["previous"]["id"] = 12

    event = parse_json(body)

    assert event.merged_ids == ["12"]


def test_v1_timestamp_seconds_when_no_micro():
    body = v1_fixture()
    del body["meta"]["timestamp_micro"]

    event = parse_json(body)

    assert event.occurred_at == datetime(2025, 2, 17, 21, 22, 41, tzinfo=UTC)
    assert event.sequence == 1739827361000000


def test_v1_unknown_action_rejected():
    body = v1_fixture()
    body["meta"]["action"] = "renamed"

    with pytest.raises(ParseError) as caught:
        parse_json(body)

    assert caught.value.code == "unsupported_event"
    assert "renamed" in caught.value.message


def test_v1_missing_object_names_field():
    body = v1_fixture()
    del body["meta"]["object"]

    with pytest.raises(ParseError) as caught:
        parse_json(body)

    assert caught.value.code == "missing_field"
    assert "object" in caught.value.message
    assert "index 0" in caught.value.message


# Webhooks v2


def test_v2_change_deal_parsed():
    events = parse_body(fixture_bytes("pipedrive_webhook_v2_change_deal.json"))

    assert len(events) == 1
    event = events[0]
    assert event.object_type == "deal"
    assert event.record_id == "9"
    assert event.change_type == "update"
    assert event.event_type == "change.deal"
    assert event.crm_event_id == "0b1f2c3d-0000-4000-8000-000000000001"
    assert (
        event.dedupe_key == "example.pipedrive.com:deal:9:change:2025-02-17T21:22:41Z"
    )
    assert event.occurred_at == datetime(2025, 2, 17, 21, 22, 41, 754000, tzinfo=UTC)
    assert event.sequence == 1739827361754000
    assert event.full_state is True


def test_v2_fields_flatten_custom_fields():
    event = parse_body(fixture_bytes("pipedrive_webhook_v2_change_deal.json"))[0]

    key = "custom_fields.0123456789abcdef0123456789abcdef01234567"
    assert event.fields[key] == "PO-FAKE-0001"
    assert "custom_fields" not in event.fields
    assert event.fields["value"] == "1234.56"
    assert event.fields["status"] == "won"
    assert event.fields["lost_reason"] is None
    assert len(event.fields) == 17


def test_v2_previous_changed_keys_only():
    event = parse_body(fixture_bytes("pipedrive_webhook_v2_change_deal.json"))[0]

    assert event.previous == {
        "status": "open",
        "stage_id": 4,
        "won_time": None,
        "close_time": None,
        "update_time": "2025-02-17T19:46:52Z",
    }


def test_v2_key_ignores_meta_id_and_webhook_id():
    first = v2_fixture()
    second = copy.deepcopy(first)
    second["meta"]["id"] = "0b1f2c3d-0000-4000-8000-000000000002"
    second["meta"]["webhook_id"] = "111112"

    assert parse_json(first).dedupe_key == parse_json(second).dedupe_key


def test_v2_integer_ids_and_epoch_timestamp():
    body = v2_fixture()
    body["meta"]["entity_id"] = 9
    body["meta"]["id"] = 77
    body["meta"]["timestamp"] = 1739827361
    del body["data"]["update_time"]

    event = parse_json(body)

    assert event.record_id == "9"
    assert event.crm_event_id == "77"
    assert event.occurred_at == datetime(2025, 2, 17, 21, 22, 41, tzinfo=UTC)
    assert event.dedupe_key == "example.pipedrive.com:deal:9:change:1739827361"


def test_v2_custom_field_extra_keys_and_null():
    body = v2_fixture()
    body["data"]["custom_fields"] = {
        "money": {"type": "monetary", "value": 250.5, "currency": "EUR"},
        "period": {"type": "daterange", "from": "2025-01-01", "until": "2025-12-31"},
        "cleared": None,
    }

    fields = parse_json(body).fields

    assert fields["custom_fields.money"] == "250.5"
    assert fields["custom_fields.money.currency"] == "EUR"
    assert fields["custom_fields.period.from"] == "2025-01-01"
    assert fields["custom_fields.period.until"] == "2025-12-31"
    assert "custom_fields.period" not in fields
    assert fields["custom_fields.cleared"] is None


@pytest.mark.parametrize(
    ("action", "expected"), [("create", "create"), ("delete", "delete")]
)
def test_v2_action_mapping(action, expected):
    body = v2_fixture()
    body["meta"]["action"] = action

    assert parse_json(body).change_type == expected


def test_v2_delete_merged_to_survivor():
    body = v2_fixture()
    body["meta"]["action"] = "delete"
    body["meta"]["entity_id"] = "12"
    body["data"] = None
    body["previous"] = {"id": 12, "merged_to_id": 9}

    event = parse_json(body)

    assert event.change_type == "merge"
    assert event.record_id == "9"
    assert event.merged_ids == ["12"]
    assert event.fields == {}
    assert event.full_state is False


def test_v2_delete_merged_to_in_data():
    body = v2_fixture()
    body["meta"]["action"] = "delete"
    body["meta"]["entity_id"] = "12"
    body["data"]["merged_to_id"] = "9"

    event = parse_json(body)

    assert event.change_type == "merge"
    assert event.record_id == "9"
    assert event.merged_ids == ["12"]


def test_v2_plain_delete():
    body = v2_fixture()
    body["meta"]["action"] = "delete"
    body["data"] = None

    event = parse_json(body)

    assert event.change_type == "delete"
    assert event.record_id == "9"
    assert event.fields == {}


def test_v2_bad_timestamp_rejected():
    body = v2_fixture()
    body["meta"]["timestamp"] = "yesterday"

    with pytest.raises(ParseError) as caught:
        parse_json(body)

    assert caught.value.code == "invalid_field"
    assert "meta.timestamp" in caught.value.message


def test_v2_missing_entity_id_names_field():
    body = v2_fixture()
    del body["meta"]["entity_id"]

    with pytest.raises(ParseError) as caught:
        parse_json(body)

    assert caught.value.code == "missing_field"
    assert "entity_id" in caught.value.message


# Bodies that cannot be read


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "empty_body"),
        (b"[]", "unexpected_shape"),
        (b'{"meta": ', "invalid_json"),
        (b'{"meta": {"host": "caf\xe9"}}', "invalid_encoding"),
        (b"[" * 100000, "too_deep"),
        (b'{"current": {}}', "missing_field"),
        (b'{"meta": {"version": "2.0"}, "data": "x"}', "missing_field"),
    ],
)
def test_unreadable_body_parse_error(body, code):
    with pytest.raises(ParseError) as caught:
        parse_body(body)

    assert caught.value.code == code


def test_data_not_object_rejected():
    body = v2_fixture()
    body["data"] = [1, 2]

    with pytest.raises(ParseError) as caught:
        parse_json(body)

    assert caught.value.code == "invalid_field"
    assert "data" in caught.value.message
