"""Merged and deleted CRM records with read-back.

A merge keeps one order and its aliases. A deletion of a merged-away id does
not touch the order. A true deletion of a synced deal opens a case for
Finance and changes nothing in the ERP."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from exceptions.models import ExceptionCase, Lane, OwnershipRule
from syncflows.models import (
    Connector,
    LedgerEntry,
    RecordAlias,
    SandboxOrder,
    SourceRecord,
    SyncRun,
)
from tests.fakes.hubspot_api import FakeHubSpot
from tests.test_readback_pipeline import (  # noqa: F401  (no_waits is an autouse fixture)
    HUBSPOT_READ_BACK,
    READ_BACK_MAPPING,
    add_hubspot_deal,
    no_waits,
    use_read_back,
    won_event,
)

pytestmark = pytest.mark.django_db

SURVIVOR, MERGED = 900000301, 900000302


@pytest.fixture
def hubspot(demo):
    with FakeHubSpot() as fake:
        use_read_back(
            fake, "hubspot", "hubspot-won-deals", HUBSPOT_READ_BACK, READ_BACK_MAPPING
        )
        yield fake


@pytest.fixture
def finance_rule(db):
    finance, _ = Group.objects.get_or_create(name="Finance")
    lane = Lane.objects.create(
        slug="finance-deletions", name="Deleted deals", owner_group=finance
    )
    return OwnershipRule.objects.create(
        reason_code="record_deleted", lane=lane, owner_group=finance
    )


def hubspot_event(deal_id, subscription, event_id, occurred_at=1764496900000, **extra):
    return {
        "eventId": event_id,
        "subscriptionId": 200009,
        "portalId": 1234567,
        "appId": 300001,
        "occurredAt": occurred_at,
        "subscriptionType": f"deal.{subscription}",
        "attemptNumber": 0,
        "objectId": deal_id,
        "changeSource": "CRM_UI",
        **extra,
    }


def merge_event(event_id=501):
    return hubspot_event(
        MERGED, "merge", event_id, primaryObjectId=SURVIVOR, mergedObjectIds=[MERGED]
    )


def test_merged_deal_keeps_one_order_and_alias(hubspot, send):
    add_hubspot_deal(hubspot, SURVIVOR, 2)
    add_hubspot_deal(hubspot, MERGED, 1)
    send.hubspot([won_event(SURVIVOR)])
    hubspot.merge("deals", SURVIVOR, MERGED)

    send.hubspot([merge_event()])
    rename = hubspot_event(
        MERGED, "propertyChange", 502, propertyName="dealname", propertyValue="Renamed"
    )
    send.hubspot([rename])

    assert SandboxOrder.objects.count() == 1
    assert len(SandboxOrder.objects.get().lines) == 2
    assert list(RecordAlias.objects.values_list("alias_key", flat=True)) == [
        f"hubspot:deal:{MERGED}"
    ]
    deals = SourceRecord.objects.filter(object_type="deal")
    assert list(deals.values_list("record_id", flat=True)) == [str(SURVIVOR)]
    survivor = deals.get()
    assert (
        survivor.state["dealname"] == f"FAKE-Deal {SURVIVOR}"
    )  # read back after the rename
    assert survivor.changes.count() == 3


def test_merged_away_deletion_keeps_order(hubspot, send, finance_rule):
    add_hubspot_deal(hubspot, SURVIVOR, 2)
    send.hubspot([won_event(SURVIVOR)])
    hubspot.merge("deals", SURVIVOR, MERGED)
    send.hubspot([merge_event()])

    send.hubspot([hubspot_event(MERGED, "deletion", 503)])

    survivor = SourceRecord.objects.get(record_key=f"hubspot:deal:{SURVIVOR}")
    assert survivor.is_deleted is False
    assert ExceptionCase.objects.count() == 0
    order = SandboxOrder.objects.get()
    assert order.state == SandboxOrder.State.CONFIRMED
    ignored = LedgerEntry.objects.filter(
        message__startswith=f"Deletion of deal {MERGED} ignored"
    )
    assert ignored.count() == 1
    runs = SyncRun.objects.filter(record=survivor).order_by("id")
    assert [run.state for run in runs] == ["queued", "unchanged", "unchanged"]


def test_true_deletion_opens_finance_case(hubspot, send, finance_rule):
    add_hubspot_deal(hubspot, 900000310, 2)
    send.hubspot([won_event(900000310)])
    order = SandboxOrder.objects.get()
    hubspot.delete("deals", 900000310)

    send.hubspot([hubspot_event(900000310, "deletion", 510)])

    case = ExceptionCase.objects.get()
    assert case.reason_code == "record_deleted"
    assert case.owner_group.name == "Finance"
    assert case.lane.slug == "finance-deletions"
    assert order.number in case.message or "command" in case.message
    assert len(case.detail["synced_commands"]) == 1
    order.refresh_from_db()
    assert order.state == SandboxOrder.State.CONFIRMED
    assert SandboxOrder.objects.count() == 1
    record = SourceRecord.objects.get(record_key="hubspot:deal:900000310")
    assert record.is_deleted is True


def test_deletion_before_sync_says_no_order(hubspot, send, finance_rule):
    add_hubspot_deal(hubspot, 900000311, 1)
    hubspot.delete("deals", 900000311)

    send.hubspot([won_event(900000311)])

    case = ExceptionCase.objects.get()
    assert case.reason_code == "record_deleted"
    assert "before its order reached the ERP" in case.message
    assert case.detail["synced_commands"] == []
    assert SandboxOrder.objects.count() == 0


def test_undone_deletion_is_not_a_deletion(hubspot, send, finance_rule):
    add_hubspot_deal(hubspot, 900000312, 2)
    send.hubspot([won_event(900000312)])

    # HubSpot still has the deal: it was restored before the read.
    send.hubspot([hubspot_event(900000312, "deletion", 512)])

    record = SourceRecord.objects.get(record_key="hubspot:deal:900000312")
    assert record.is_deleted is False
    assert ExceptionCase.objects.count() == 0
    assert SandboxOrder.objects.count() == 1


def test_lines_before_deal_give_one_order(hubspot, send):
    Connector.objects.create(
        slug="hubspot-lines",
        name="HubSpot line items relay",
        kind="generic",
        namespace="hubspot",
        default_currency="EUR",
        secrets=["whsec_lines"],
        settings={
            "object_type_path": "type",
            "object_type_map": {"line_item.creation": "line_item"},
            "record_id_path": "line_item_id",
            "full_state": True,
            "parents": {"line_item": {"type": "deal", "id_path": "deal_id"}},
        },
    )
    deal_id = 900000320
    add_hubspot_deal(hubspot, deal_id, 2, price="617.28")
    line_ids = hubspot.associations[("deals", str(deal_id), "line_items")]
    for line_id in line_ids:
        item = {
            "type": "line_item.creation",
            "line_item_id": line_id,
            "deal_id": str(deal_id),
            "hs_sku": "FAKE-SKU-100",
            "quantity": "1",
            "price": "617.28",
        }
        assert (
            send.generic([item], secret="whsec_lines", slug="hubspot-lines").status_code
            == 200
        )
    assert SandboxOrder.objects.count() == 0
    early = SourceRecord.objects.filter(object_type="line_item")
    assert early.count() == 2
    assert all(line.parent_id is None for line in early)

    send.hubspot([won_event(deal_id)])

    order = SandboxOrder.objects.get()
    assert len(order.lines) == 2
    assert order.total == Decimal("1234.56")
    lines = SourceRecord.objects.filter(object_type="line_item")
    assert lines.count() == 2
    assert {line.parent.record_key for line in lines} == {f"hubspot:deal:{deal_id}"}


def test_removed_line_item_marked_deleted(hubspot, send):
    deal_id = 900000330
    add_hubspot_deal(hubspot, deal_id, 3)
    send.hubspot([won_event(deal_id)])
    removed = hubspot.associations[("deals", str(deal_id), "line_items")].pop()
    hubspot.objects["deals"][str(deal_id)]["amount"] = "20.00"

    later = int((timezone.now() + timedelta(hours=1)).timestamp() * 1000)
    send.hubspot([won_event(deal_id, later, event_id=2, prop="amount", value="20.00")])

    line = SourceRecord.objects.get(record_key=f"hubspot:line_item:{removed}")
    assert line.is_deleted is True
    live = SourceRecord.objects.filter(object_type="line_item", is_deleted=False)
    assert live.count() == 2
