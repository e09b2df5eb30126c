"""Trace service and the ``trace`` management command, on ORM-built data."""

import json
from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.utils import timezone

from exceptions.models import ExceptionCase, Lane
from meshline.roles import FINANCE
from syncflows.models import (
    Brief,
    BriefVersion,
    Command,
    Connector,
    Destination,
    LedgerEntry,
    RecordAlias,
    SourceRecord,
)
from syncflows.services.trace import MAX_RECORD_KEYS, build_trace, find_record_keys

HUBSPOT_KEY = "hubspot:deal:900000001"
SALESFORCE_KEY = "salesforce_cdc:Opportunity:006xx0000000001AAA"


def make_connector(slug: str, kind: str) -> Connector:
    return Connector.objects.create(slug=slug, name=slug, kind=kind)


def make_destination(slug: str = "sandbox-eu") -> Destination:
    return Destination.objects.create(slug=slug, name=slug, adapter="sandbox")


def make_brief_version(slug: str = "won-deals") -> BriefVersion:
    brief = Brief.objects.create(slug=slug, name=slug, intent="Closed deals to orders")
    return BriefVersion.objects.create(
        brief=brief, number=1, state="active", mapping={}, command_schema={}
    )


def make_record(connector: Connector, object_type: str, record_id: str):
    return SourceRecord.objects.create(
        connector=connector,
        object_type=object_type,
        record_id=record_id,
        record_key=f"{connector.kind}:{object_type}:{record_id}",
        state={"amount": "1200.00", "dealstage": "closedwon"},
        revision=3,
    )


def make_command(record, destination, version, key: str, **fields) -> Command:
    defaults = {
        "command_type": "sales_order.create",
        "payload": {"total": "1200.00", "currency": "EUR"},
        "payload_hash": "h-" + key,
        "ordering_key": record.record_key,
        "next_attempt_at": timezone.now(),
    }
    return Command.objects.create(
        idempotency_key=key,
        record=record,
        destination=destination,
        brief_version=version,
        **{**defaults, **fields},
    )


def make_lane(slug: str = "finance", group_name: str = FINANCE) -> Lane:
    group = Group.objects.get(name=group_name)
    return Lane.objects.create(slug=slug, name=slug.title(), owner_group=group)


def make_case(lane, record_key: str, **fields) -> ExceptionCase:
    now = timezone.now()
    defaults = {
        "reason_code": "mapping_missing",
        "title": "A value has no mapping",
        "message": "SKU WIDGET-9 is not in the sku-map table.",
        "opened_at": now,
        "due_at": now + timezone.timedelta(hours=24),
    }
    return ExceptionCase.objects.create(
        lane=lane, record_key=record_key, **{**defaults, **fields}
    )


@pytest.fixture
def world(db):
    """Two CRM records with ledger entries, commands, an alias and cases."""
    hubspot = make_connector("hubspot-eu", "hubspot")
    salesforce = make_connector("salesforce-us", "salesforce_cdc")
    destination = make_destination()
    version = make_brief_version()

    deal = make_record(hubspot, "deal", "900000001")
    opportunity = make_record(salesforce, "Opportunity", "006xx0000000001AAA")
    RecordAlias.objects.create(
        record=deal, alias_key="hubspot:deal:900000777", alias_id="900000777"
    )

    failed = make_command(
        deal,
        destination,
        version,
        "key-deal-1",
        state="failed",
        reason_code="mapping_missing",
        last_error="SKU WIDGET-9 is not in the sku-map table.",
        attempts=1,
    )
    succeeded = make_command(
        deal,
        destination,
        version,
        "key-deal-2",
        state="succeeded",
        erp_document_number="SO-00042",
        erp_reference="sandbox-order-42",
        attempts=2,
        finished_at=timezone.now(),
    )
    make_command(opportunity, destination, version, "key-opp-1")

    lane = make_lane()
    owner = User.objects.create_user("fiona")
    user_case = make_case(lane, HUBSPOT_KEY, owner_user=owner, command=failed)
    group_case = make_case(
        lane, HUBSPOT_KEY, owner_group=lane.owner_group, state="resolved"
    )

    steps = [
        ("receive", True, {}),
        ("normalise", True, {"payload_after": {"amount": "1200.00"}}),
        ("enqueue", True, {"command": failed}),
        ("fail", False, {"command": failed, "reason_code": "mapping_missing"}),
        ("exception", False, {"case_id": user_case.pk}),
        ("execute", True, {"command": succeeded}),
    ]
    entries = [
        LedgerEntry.objects.create(
            step=step, ok=ok, record_key=HUBSPOT_KEY, message=f"step {step}", **refs
        )
        for step, ok, refs in steps
    ]
    LedgerEntry.objects.create(
        step="receive", record_key=SALESFORCE_KEY, message="step receive"
    )

    return {
        "deal": deal,
        "commands": [failed, succeeded],
        "cases": [user_case, group_case],
        "entries": entries,
        "steps": [step for step, _ok, _refs in steps],
    }


def test_find_by_hubspot_record_id(world):
    assert find_record_keys("900000001") == [HUBSPOT_KEY]


def test_find_by_salesforce_record_id(world):
    assert find_record_keys("006xx0000000001AAA") == [SALESFORCE_KEY]


def test_find_by_alias(world):
    assert find_record_keys("900000777") == [HUBSPOT_KEY]


def test_find_by_full_record_key(world):
    assert find_record_keys(HUBSPOT_KEY) == [HUBSPOT_KEY]


def test_find_by_erp_document_number(world):
    assert find_record_keys("SO-00042") == [HUBSPOT_KEY]


def test_find_by_erp_reference(world):
    assert find_record_keys("sandbox-order-42") == [HUBSPOT_KEY]


def test_find_by_idempotency_key(world):
    assert find_record_keys("key-opp-1") == [SALESFORCE_KEY]


def test_find_strips_whitespace(world):
    assert find_record_keys("  900000001\n") == [HUBSPOT_KEY]


def test_find_key_only_in_ledger(world):
    LedgerEntry.objects.create(
        step="reject", ok=False, record_key="pipedrive:deal:55", message="bad"
    )
    assert find_record_keys("pipedrive:deal:55") == ["pipedrive:deal:55"]


def test_find_unknown_returns_empty(world):
    assert find_record_keys("123456789") == []
    assert find_record_keys("nobody:deal:1") == []


def test_find_blank_returns_empty(db):
    assert find_record_keys("   ") == []


def test_find_same_id_in_two_objects(world):
    other = make_record(world["deal"].connector, "company", "900000001")
    assert find_record_keys("900000001") == sorted([HUBSPOT_KEY, other.record_key])


def test_find_caps_at_fifty(db):
    connector = make_connector("hubspot-eu", "hubspot")
    SourceRecord.objects.bulk_create(
        SourceRecord(
            connector=connector,
            object_type=f"type{n:02d}",
            record_id="7",
            record_key=f"hubspot:type{n:02d}:7",
        )
        for n in range(MAX_RECORD_KEYS + 5)
    )
    keys = find_record_keys("7")
    assert len(keys) == MAX_RECORD_KEYS
    assert keys[0] == "hubspot:type00:7"
    assert keys[-1] == "hubspot:type49:7"


def test_find_query_count(world, django_assert_num_queries):
    with django_assert_num_queries(1):
        find_record_keys("900000001")
    with django_assert_num_queries(2):
        find_record_keys("pipedrive:deal:55")


def test_trace_record(world):
    trace = build_trace(HUBSPOT_KEY)
    assert trace["record_key"] == HUBSPOT_KEY
    assert trace["record"] == {
        "record_key": HUBSPOT_KEY,
        "connector": "hubspot-eu",
        "object_type": "deal",
        "record_id": "900000001",
        "state": {"amount": "1200.00", "dealstage": "closedwon"},
        "revision": 3,
        "is_deleted": False,
    }


def test_trace_entries_oldest_first(world):
    entries = build_trace(HUBSPOT_KEY)["entries"]
    assert [entry["step"] for entry in entries] == world["steps"]
    assert [entry["id"] for entry in entries] == [e.pk for e in world["entries"]]
    fail = entries[3]
    assert fail["step_label"] == "Failed"
    assert fail["ok"] is False
    assert fail["reason_code"] == "mapping_missing"
    assert fail["command_id"] == world["commands"][0].pk
    assert entries[4]["case_id"] == world["cases"][0].pk
    assert entries[1]["payload_after"] == {"amount": "1200.00"}
    assert entries[0]["created_at"] == world["entries"][0].created_at.isoformat()


def test_trace_commands(world):
    commands = build_trace(HUBSPOT_KEY)["commands"]
    failed, succeeded = world["commands"]
    assert [command["id"] for command in commands] == [failed.pk, succeeded.pk]
    assert commands[0]["state"] == "failed"
    assert commands[0]["reason_code"] == "mapping_missing"
    assert commands[0]["finished_at"] is None
    assert commands[1]["erp_document_number"] == "SO-00042"
    assert commands[1]["erp_reference"] == "sandbox-order-42"
    assert commands[1]["attempts"] == 2
    assert commands[1]["destination"] == "sandbox-eu"
    assert commands[1]["payload"] == {"total": "1200.00", "currency": "EUR"}
    assert commands[1]["finished_at"] == succeeded.finished_at.isoformat()


def test_trace_cases_owner_names(world):
    cases = build_trace(HUBSPOT_KEY)["cases"]
    user_case, group_case = world["cases"]
    assert cases == [
        {
            "id": user_case.pk,
            "state": "open",
            "reason_code": "mapping_missing",
            "title": "A value has no mapping",
            "lane": "finance",
            "owner": "fiona",
        },
        {
            "id": group_case.pk,
            "state": "resolved",
            "reason_code": "mapping_missing",
            "title": "A value has no mapping",
            "lane": "finance",
            "owner": FINANCE,
        },
    ]


def test_trace_is_json_serialisable(world):
    trace = build_trace(HUBSPOT_KEY)
    assert json.loads(json.dumps(trace)) == trace


def test_trace_unknown_key(db):
    assert build_trace("hubspot:deal:1") == {
        "record_key": "hubspot:deal:1",
        "record": None,
        "entries": [],
        "commands": [],
        "cases": [],
    }


def test_trace_query_count_constant(world, django_assert_num_queries):
    with django_assert_num_queries(4):
        build_trace(SALESFORCE_KEY)
    with django_assert_num_queries(4):
        build_trace(HUBSPOT_KEY)


def run_trace(*args) -> str:
    out = StringIO()
    call_command("trace", *args, stdout=out)
    return out.getvalue()


def test_command_json_single(world):
    trace = json.loads(run_trace("900000001", "--json"))
    assert trace["record_key"] == HUBSPOT_KEY
    assert [entry["step"] for entry in trace["entries"]] == world["steps"]
    assert [entry["id"] for entry in trace["entries"]] == [
        entry.pk for entry in world["entries"]
    ]
    assert trace == build_trace(HUBSPOT_KEY)


def test_command_json_by_erp_number(world):
    trace = json.loads(run_trace("SO-00042", "--json"))
    assert trace["record_key"] == HUBSPOT_KEY


def test_command_json_many_is_list(world):
    other = make_record(world["deal"].connector, "company", "900000001")
    traces = json.loads(run_trace("900000001", "--json"))
    assert isinstance(traces, list)
    assert [trace["record_key"] for trace in traces] == sorted(
        [HUBSPOT_KEY, other.record_key]
    )


def test_command_timeline_text(world):
    output = run_trace("900000777")
    lines = output.splitlines()
    assert lines[0] == f"Record {HUBSPOT_KEY}"
    assert lines[1] == "  connector hubspot-eu, revision 3"
    assert lines[2] == "Timeline:"
    assert "FAIL Failed [mapping_missing]: step fail" in lines[6]
    assert f"command {world['commands'][0].pk}" in lines[6]
    assert "Commands:" in lines
    assert "Exception cases:" in lines
    assert any("SO-00042" in line for line in lines)
    assert any("owner fiona" in line for line in lines)


def test_command_no_match_raises(world):
    with pytest.raises(CommandError, match="No CRM record.*'424242'"):
        run_trace("424242")
