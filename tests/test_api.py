"""The read-only JSON API: permissions, filters, traces, schema and query counts."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import include, path
from django.utils import timezone
from drf_spectacular.validation import validate_schema

from exceptions.models import ExceptionCase
from meshline.roles import FINANCE, PRICING_OPS, VIEWER
from syncflows.models import Command, Delivery, InboundEvent, RecordAlias
from tests.test_trace import (
    HUBSPOT_KEY,
    make_brief_version,
    make_case,
    make_command,
    make_connector,
    make_destination,
    make_lane,
    make_record,
)

# The tests route through this module, so they do not depend on where the
# project's root URLconf mounts the API.
pytestmark = pytest.mark.urls("tests.test_api")
urlpatterns = [path("api/v1/", include("meshline.api_urls"))]

LIST_URLS = [
    "/api/v1/deliveries/",
    "/api/v1/events/",
    "/api/v1/commands/",
    "/api/v1/cases/",
]
ALL_URLS = [
    *LIST_URLS,
    "/api/v1/trace/?q=900000001",
    f"/api/v1/trace/{HUBSPOT_KEY}/",
    "/api/v1/schema/",
]


def make_user(username: str, *roles: str) -> User:
    user = User.objects.create_user(username)
    user.groups.set(Group.objects.filter(name__in=roles))
    return user


@pytest.fixture
def viewer(db):
    return make_user("vera", VIEWER)


@pytest.fixture
def api(client, viewer):
    client.force_login(viewer)
    return client


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return sorted(row["id"] for row in response.json()["results"])


def make_delivery(connector, *, status="accepted", source="webhook", received_at=None):
    return Delivery.objects.create(
        connector=connector,
        received_at=received_at or timezone.now(),
        source=source,
        status=status,
        content_hash=f"hash-{Delivery.objects.count()}",
        body=b'{"email": "person@example.com"}',
        size=31,
        content_type="application/json",
        headers={"X-HubSpot-Signature-v3": "sig"},
    )


def make_event(delivery, *, record_id="900000001", received_at=None, **fields):
    defaults = {
        "position": 0,
        "dedupe_key": f"dedupe-{InboundEvent.objects.count()}",
        "event_type": "deal.propertyChange",
        "object_type": "deal",
        "occurred_at": timezone.now(),
        "payload": {"objectId": record_id},
    }
    return InboundEvent.objects.create(
        delivery=delivery,
        connector=delivery.connector,
        record_id=record_id,
        received_at=received_at or delivery.received_at,
        **{**defaults, **fields},
    )


# Permissions


@pytest.mark.parametrize("url", ALL_URLS)
def test_anonymous_gets_403_json(client, db, url):
    response = client.get(url)
    assert response.status_code == 403
    assert response["Content-Type"].split(";")[0].endswith("json")
    body = response.json()
    assert body["message"] == "Authentication credentials were not provided."
    assert body["code"] == "not_authenticated"


@pytest.mark.parametrize("url", LIST_URLS)
def test_user_without_role_gets_403(client, db, url):
    client.force_login(make_user("nobody"))
    response = client.get(url)
    assert response.status_code == 403
    assert "needs one of these roles" in response.json()["message"]
    assert VIEWER in response.json()["message"]


@pytest.mark.parametrize("url", LIST_URLS)
def test_viewer_can_list(api, url):
    response = api.get(url)
    assert response.status_code == 200
    assert response.json()["count"] == 0


@pytest.mark.parametrize("url", LIST_URLS)
def test_post_not_allowed(api, url):
    response = api.post(url, {}, content_type="application/json")
    assert response.status_code == 405
    assert response.json()["message"] == 'Method "POST" not allowed.'


def test_unknown_object_404_json(api):
    response = api.get("/api/v1/commands/999999/")
    assert response.status_code == 404
    assert response.json()["message"] == "No Command matches the given query."


# Deliveries


@pytest.fixture
def deliveries(db):
    hubspot = make_connector("hubspot-eu", "hubspot")
    pipedrive = make_connector("pipedrive-uk", "pipedrive")
    now = timezone.now()
    return {
        "old": make_delivery(hubspot, received_at=now - timedelta(days=3)),
        "duplicate": make_delivery(hubspot, status="duplicate"),
        "file": make_delivery(pipedrive, source="file"),
        "now": now,
    }


def test_delivery_filters(api, deliveries):
    old, duplicate, file_import = (deliveries[k] for k in ("old", "duplicate", "file"))
    since = (deliveries["now"] - timedelta(days=1)).isoformat()
    url = "/api/v1/deliveries/"
    assert ids(api.get(url)) == sorted([old.pk, duplicate.pk, file_import.pk])
    assert ids(api.get(url, {"connector": "hubspot-eu"})) == [old.pk, duplicate.pk]
    assert ids(api.get(url, {"status": "duplicate"})) == [duplicate.pk]
    assert ids(api.get(url, {"source": "file"})) == [file_import.pk]
    assert ids(api.get(url, {"received_at_after": since})) == sorted(
        [duplicate.pk, file_import.pk]
    )
    assert ids(api.get(url, {"received_at_before": since})) == [old.pk]


def test_delivery_has_no_body_or_headers(api, deliveries):
    response = api.get(f"/api/v1/deliveries/{deliveries['old'].pk}/")
    body = response.json()
    assert response.status_code == 200
    assert body["connector"] == "hubspot-eu"
    assert "body" not in body
    assert "headers" not in body
    assert b"person@example.com" not in response.content


def test_delivery_unknown_connector_400(api, deliveries):
    response = api.get("/api/v1/deliveries/", {"connector": "nope"})
    assert response.status_code == 400
    body = response.json()
    assert body["message"] == "The request is invalid."
    assert list(body["errors"]) == ["connector"]


def test_delivery_bad_date_400(api, deliveries):
    response = api.get("/api/v1/deliveries/", {"received_at_after": "yesterday"})
    assert response.status_code == 400
    assert "received_at" in response.json()["errors"]


def test_delivery_ordering(api, deliveries):
    response = api.get("/api/v1/deliveries/", {"ordering": "received_at"})
    first = response.json()["results"][0]
    assert first["id"] == deliveries["old"].pk


# Inbound events


def test_event_filters(api, deliveries):
    old_delivery = deliveries["old"]
    processed = make_event(old_delivery, status="processed")
    company = make_event(deliveries["duplicate"], record_id="42", object_type="company")
    created = make_event(deliveries["file"], record_id="77", event_type="deal.creation")
    since = (deliveries["now"] - timedelta(days=1)).isoformat()
    url = "/api/v1/events/"
    assert ids(api.get(url, {"connector": "hubspot-eu"})) == [processed.pk, company.pk]
    assert ids(api.get(url, {"status": "processed"})) == [processed.pk]
    assert ids(api.get(url, {"object_type": "company"})) == [company.pk]
    assert ids(api.get(url, {"record_id": "77"})) == [created.pk]
    assert ids(api.get(url, {"event_type": "deal.creation"})) == [created.pk]
    assert ids(api.get(url, {"received_at_before": since})) == [processed.pk]


def test_event_payload_only_in_detail(api, deliveries):
    event = make_event(deliveries["old"])
    listed = api.get("/api/v1/events/").json()["results"][0]
    detail = api.get(f"/api/v1/events/{event.pk}/").json()
    assert "payload" not in listed
    assert detail["payload"] == {"objectId": "900000001"}
    assert detail["connector"] == "hubspot-eu"


# Commands


@pytest.fixture
def commands(db):
    hubspot = make_connector("hubspot-eu", "hubspot")
    eu = make_destination("sandbox-eu")
    us = make_destination("tryton-us")
    version = make_brief_version()
    deal = make_record(hubspot, "deal", "900000001")
    other = make_record(hubspot, "deal", "900000002")
    pending = make_command(deal, eu, version, "key-1")
    failed = make_command(
        deal, us, version, "key-2", state="failed", reason_code="erp_rejected"
    )
    invoice = make_command(
        other,
        eu,
        version,
        "key-3",
        state="succeeded",
        command_type="invoice.create",
        erp_document_number="INV-7",
    )
    Command.objects.filter(pk=pending.pk).update(
        created_at=timezone.now() - timedelta(days=10)
    )
    return {"pending": pending, "failed": failed, "invoice": invoice}


def test_command_filters(api, commands):
    pending, failed, invoice = (commands[k] for k in ("pending", "failed", "invoice"))
    since = (timezone.now() - timedelta(days=1)).isoformat()
    url = "/api/v1/commands/"
    assert ids(api.get(url, {"state": "failed"})) == [failed.pk]
    assert ids(api.get(url, {"destination": "sandbox-eu"})) == [pending.pk, invoice.pk]
    assert ids(api.get(url, {"command_type": "invoice.create"})) == [invoice.pk]
    assert ids(api.get(url, {"reason_code": "erp_rejected"})) == [failed.pk]
    assert ids(api.get(url, {"record_key": "DEAL:900000001"})) == [
        pending.pk,
        failed.pk,
    ]
    assert ids(api.get(url, {"idempotency_key": "key-3"})) == [invoice.pk]
    assert ids(api.get(url, {"erp_document_number": "INV-7"})) == [invoice.pk]
    assert ids(api.get(url, {"created_at_after": since})) == [failed.pk, invoice.pk]
    assert ids(api.get(url, {"created_at_before": since})) == [pending.pk]


def test_command_list_and_detail_fields(api, commands):
    invoice = commands["invoice"]
    listed = api.get("/api/v1/commands/", {"idempotency_key": "key-3"}).json()
    row = listed["results"][0]
    assert row["record_key"] == "hubspot:deal:900000002"
    assert row["destination"] == "sandbox-eu"
    assert row["brief"] == "won-deals"
    assert row["brief_version"] == 1
    assert "payload" not in row
    detail = api.get(f"/api/v1/commands/{invoice.pk}/").json()
    assert detail["payload"] == {"total": "1200.00", "currency": "EUR"}


# Exception cases


@pytest.fixture
def cases(db, viewer):
    hubspot = make_connector("hubspot-eu", "hubspot")
    destination = make_destination("sandbox-eu")
    version = make_brief_version()
    deal = make_record(hubspot, "deal", "900000001")
    RecordAlias.objects.create(
        record=deal, alias_key="hubspot:deal:900000777", alias_id="900000777"
    )
    command = make_command(
        deal, destination, version, "key-1", erp_document_number="SO-9"
    )

    finance = make_lane("finance", FINANCE)
    pricing = make_lane("pricing", PRICING_OPS)
    other_user = make_user("olga", FINANCE)
    now = timezone.now()
    hour = timedelta(hours=1)

    return {
        # Opened 30 hours ago, due an hour ago: breached.
        "breached": make_case(
            finance,
            HUBSPOT_KEY,
            owner_user=viewer,
            opened_at=now - 30 * hour,
            due_at=now - hour,
            command=command,
            destination=destination,
        ),
        "due_soon": make_case(
            pricing,
            "hubspot:deal:900000002",
            state="assigned",
            owner_user=other_user,
            keyword="discounts",
            business_unit="emea",
            reason_code="acceptance_failed",
            opened_at=now - 5 * hour,
            due_at=now + 2 * hour,
        ),
        "on_track": make_case(
            pricing,
            "hubspot:deal:900000003",
            state="acknowledged",
            owner_group=pricing.owner_group,
            opened_at=now - hour,
            due_at=now + 10 * hour,
        ),
        # Past due but closed, so no SLA state matches it.
        "resolved": make_case(
            finance,
            "hubspot:deal:900000004",
            state="resolved",
            owner_group=finance.owner_group,
            opened_at=now - 50 * hour,
            due_at=now - 20 * hour,
        ),
        "other_user": other_user,
    }


def case_ids(cases, *names) -> list[int]:
    return sorted(cases[name].pk for name in names)


def test_case_open_state(api, cases):
    response = api.get("/api/v1/cases/", {"state": "open"})
    assert ids(response) == case_ids(cases, "breached", "due_soon", "on_track")


def test_case_exact_states(api, cases):
    url = "/api/v1/cases/"
    assert ids(api.get(url, {"state": "assigned"})) == case_ids(cases, "due_soon")
    assert ids(api.get(url, {"state": "resolved"})) == case_ids(cases, "resolved")
    assert ids(api.get(url, {"state": "dismissed"})) == []


@pytest.mark.parametrize(
    "sla, expected",
    [("breached", "breached"), ("due_soon", "due_soon"), ("on_track", "on_track")],
)
def test_case_sla_states(api, cases, sla, expected):
    response = api.get("/api/v1/cases/", {"sla": sla})
    assert ids(response) == case_ids(cases, expected)
    assert response.json()["results"][0]["sla_state"] == sla


def test_case_sla_state_null_when_closed(api, cases):
    row = api.get(f"/api/v1/cases/{cases['resolved'].pk}/").json()
    assert row["sla_state"] is None


def test_case_owner_filters(api, cases, viewer):
    url = "/api/v1/cases/"
    other = cases["other_user"]
    pricing_group = Group.objects.get(name=PRICING_OPS)
    assert ids(api.get(url, {"owner": "me"})) == case_ids(cases, "breached")
    assert ids(api.get(url, {"owner": str(other.pk)})) == case_ids(cases, "due_soon")
    assert ids(api.get(url, {"owner_group": pricing_group.pk})) == case_ids(
        cases, "on_track"
    )


def test_case_owner_invalid_400(api, cases):
    response = api.get("/api/v1/cases/", {"owner": "fiona"})
    assert response.status_code == 400
    assert response.json()["errors"]["owner"] == [
        'Owner "fiona" is invalid: enter a user id or "me".'
    ]


def test_case_field_filters(api, cases):
    url = "/api/v1/cases/"
    assert ids(api.get(url, {"lane": "pricing"})) == case_ids(
        cases, "due_soon", "on_track"
    )
    assert ids(api.get(url, {"keyword": "discounts"})) == case_ids(cases, "due_soon")
    assert ids(api.get(url, {"business_unit": "emea"})) == case_ids(cases, "due_soon")
    assert ids(api.get(url, {"destination": "sandbox-eu"})) == case_ids(
        cases, "breached"
    )
    assert ids(api.get(url, {"reason_code": "acceptance_failed"})) == case_ids(
        cases, "due_soon"
    )


def test_case_age_filters(api, cases):
    url = "/api/v1/cases/"
    assert ids(api.get(url, {"age_min": "24"})) == case_ids(
        cases, "breached", "resolved"
    )
    assert ids(api.get(url, {"age_max": "6"})) == case_ids(
        cases, "due_soon", "on_track"
    )
    assert ids(api.get(url, {"age_min": "2", "age_max": "6.5"})) == case_ids(
        cases, "due_soon"
    )


@pytest.mark.parametrize(
    "query", ["900000001", "900000777", HUBSPOT_KEY, "SO-9", "key-1"]
)
def test_case_search(api, cases, query):
    response = api.get("/api/v1/cases/", {"q": query})
    assert ids(response) == case_ids(cases, "breached")


def test_case_search_record_without_source_record(api, cases):
    response = api.get("/api/v1/cases/", {"q": "hubspot:deal:900000003"})
    assert ids(response) == case_ids(cases, "on_track")


def test_case_row_fields(api, cases, viewer):
    row = api.get(f"/api/v1/cases/{cases['breached'].pk}/").json()
    assert row["lane"] == "finance"
    assert row["owner_user"] == "vera"
    assert row["owner_user_id"] == viewer.pk
    assert row["owner_group"] is None
    assert row["destination"] == "sandbox-eu"
    assert row["command"] == cases["breached"].command_id


def test_case_ordering(api, cases):
    response = api.get("/api/v1/cases/", {"ordering": "-opened_at"})
    order = [row["id"] for row in response.json()["results"]]
    expected = ["on_track", "due_soon", "breached", "resolved"]
    assert order == [cases[name].pk for name in expected]


# Trace


def test_trace_search(api, cases):
    response = api.get("/api/v1/trace/", {"q": "900000777"})
    assert response.status_code == 200
    body = response.json()
    assert body["record_keys"] == [HUBSPOT_KEY]
    assert [trace["record_key"] for trace in body["traces"]] == [HUBSPOT_KEY]
    trace = body["traces"][0]
    assert trace["record"]["record_id"] == "900000001"
    assert [case["id"] for case in trace["cases"]] == [cases["breached"].pk]
    assert [command["idempotency_key"] for command in trace["commands"]] == ["key-1"]


@pytest.mark.parametrize(
    "query, expected",
    [("900000001", HUBSPOT_KEY), ("SO-9", HUBSPOT_KEY), ("key-1", HUBSPOT_KEY)],
)
def test_trace_search_by_ids(api, cases, query, expected):
    body = api.get("/api/v1/trace/", {"q": query}).json()
    assert body["record_keys"] == [expected]


def test_trace_search_no_match(api, cases):
    response = api.get("/api/v1/trace/", {"q": "nothing-like-this"})
    assert response.status_code == 200
    assert response.json() == {"record_keys": [], "traces": []}


def test_trace_search_limits_traces_to_five(api, db):
    connector = make_connector("hubspot-eu", "hubspot")
    for number in range(7):
        make_record(connector, f"type{number}", "5")
    body = api.get("/api/v1/trace/", {"q": "5"}).json()
    assert len(body["record_keys"]) == 7
    assert [trace["record_key"] for trace in body["traces"]] == body["record_keys"][:5]


def test_trace_search_missing_q_400(api, db):
    response = api.get("/api/v1/trace/")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert body["message"].startswith("The q parameter is missing")


def test_trace_detail(api, cases):
    response = api.get(f"/api/v1/trace/{HUBSPOT_KEY}/")
    assert response.status_code == 200
    body = response.json()
    assert body["record_key"] == HUBSPOT_KEY
    assert body["record"]["connector"] == "hubspot-eu"


def test_trace_detail_case_only(api, cases):
    response = api.get("/api/v1/trace/hubspot:deal:900000003/")
    assert response.status_code == 200
    assert response.json()["record"] is None
    assert [case["id"] for case in response.json()["cases"]] == [cases["on_track"].pk]


def test_trace_detail_unknown_404(api, db):
    response = api.get("/api/v1/trace/hubspot:deal:1/")
    assert response.status_code == 404
    assert "hubspot:deal:1" in response.json()["message"]
    assert response.json()["code"] == "not_found"


# Schema


def test_schema_is_valid_openapi(api):
    response = api.get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")
    assert sorted(schema["paths"]) == [
        "/api/v1/cases/",
        "/api/v1/cases/{id}/",
        "/api/v1/commands/",
        "/api/v1/commands/{id}/",
        "/api/v1/deliveries/",
        "/api/v1/deliveries/{id}/",
        "/api/v1/events/",
        "/api/v1/events/{id}/",
        "/api/v1/kpis/",
        "/api/v1/trace/",
        "/api/v1/trace/{record_key}/",
    ]


def test_schema_lists_filters(api):
    schema = api.get("/api/v1/schema/", {"format": "json"}).json()
    params = {
        param["name"]
        for param in schema["paths"]["/api/v1/cases/"]["get"]["parameters"]
    }
    expected = {"lane", "owner", "state", "sla", "age_min", "age_max", "q", "ordering"}
    assert expected <= params
    trace_params = schema["paths"]["/api/v1/trace/"]["get"]["parameters"]
    assert [(param["name"], param["required"]) for param in trace_params] == [
        ("q", True)
    ]


# Query counts


def count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as context:
        response = client.get(url)
    assert response.status_code == 200
    return len(context.captured_queries)


def grow_data(count: int):
    """Add ``count`` rows of every listed model, each with its own related rows."""
    for number in range(count):
        connector = make_connector(f"conn-{count}-{number}", "generic")
        destination = make_destination(f"dest-{count}-{number}")
        version = make_brief_version(f"brief-{count}-{number}")
        record = make_record(connector, "deal", f"{count}-{number}")
        delivery = make_delivery(connector)
        make_event(delivery, record_id=record.record_id)
        command = make_command(record, destination, version, f"key-{count}-{number}")
        lane = make_lane(f"lane-{count}-{number}")
        make_case(
            lane,
            record.record_key,
            owner_user=User.objects.create_user(f"owner-{count}-{number}"),
            command=command,
            destination=destination,
        )


@pytest.mark.parametrize("url", LIST_URLS)
def test_list_query_count_constant(api, db, url):
    grow_data(3)
    small = count_queries(api, url)
    grow_data(27)
    assert api.get(url).json()["count"] == 30
    assert count_queries(api, url) == small


def test_case_filters_query_count_constant(api, db):
    url = "/api/v1/cases/?state=open&sla=on_track&owner=me&q=900000001&lane=lane-3-0"
    grow_data(3)
    small = count_queries(api, url)
    grow_data(27)
    assert count_queries(api, url) == small
    assert ExceptionCase.objects.count() == 30
