"""Every CRM fixture through the inbound endpoint into the sandbox ERP."""

from decimal import Decimal

import pytest

from exceptions.models import ExceptionCase
from syncflows.models import Command, Delivery, InboundEvent, LedgerEntry, SandboxOrder, SourceRecord
from tests.conftest import FIXTURES

pytestmark = pytest.mark.django_db


def orders_for(reference):
    return list(SandboxOrder.objects.filter(crm_reference=reference))


def test_hubspot_batch_orders_won_deal_once(demo, send):
    body = (FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes()
    response = send.hubspot(body)
    assert response.status_code == 200
    assert response.json()["events_duplicate"] == 1  # the redelivery of event 1
    orders = orders_for("hubspot:deal:900000001")
    assert len(orders) == 1
    order = orders[0]
    assert order.total == Decimal("1234.56")
    assert order.currency == "EUR"
    assert [line["sku"] for line in order.lines] == ["FAKE-SKU-DEAL"]
    assert SandboxOrder.objects.count() == 1
    # The merge of 900000003 into 900000001 leaves an alias, not a second order.
    record = SourceRecord.objects.get(record_key="hubspot:deal:900000001")
    assert list(record.aliases.values_list("alias_id", flat=True)) == ["900000003"]


def test_hubspot_redelivered_batch_is_duplicate(demo, send):
    body = (FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes()
    send.hubspot(body)
    events_before = InboundEvent.objects.count()
    response = send.hubspot(body)
    assert response.status_code == 200
    assert response.json()["status"] == "duplicate"
    assert InboundEvent.objects.count() == events_before
    assert SandboxOrder.objects.count() == 1
    assert LedgerEntry.objects.filter(step="duplicate").count() == 1 + 5


def test_salesforce_cdc_fixtures_order_once(demo, send):
    for name in (
        "salesforce_cdc_opportunity_create.json",
        "salesforce_cdc_opportunity_update_stage.json",
        "salesforce_cdc_opportunity_update_pubsub_decoded.json",
    ):
        response = send.salesforce_cdc((FIXTURES / name).read_bytes())
        assert response.status_code == 200, response.content
    orders = orders_for("salesforce_cdc:Opportunity:006xx0000000001AAA")
    assert len(orders) == 1
    assert orders[0].total == Decimal("1234.56")
    assert orders[0].currency == "EUR"
    assert orders[0].customer.reference == "salesforce_cdc:Account:001xx0000000001AAA"
    assert str(orders[0].close_date) == "2024-09-30"
    # The older Pub/Sub event cleared NextStep but did not roll StageName back.
    state = SourceRecord.objects.get(record_key="salesforce_cdc:Opportunity:006xx0000000001AAA").state
    assert state["StageName"] == "Closed Won"
    assert state["NextStep"] is None
    assert state["Amount"] == "1234.56"


def test_outbound_message_waits_for_cpq_quote(demo, send):
    xml = (FIXTURES / "salesforce_outbound_message_opportunity.xml").read_bytes()
    response = send.outbound(xml)
    assert response.status_code == 200
    assert b"<Ack>true</Ack>" in response.content
    assert SandboxOrder.objects.count() == 0  # HasOpportunityLineItem: waits for lines
    assert LedgerEntry.objects.filter(step="wait").count() == 1

    quote = (FIXTURES / "salesforce_cpq_quote_discounted_lines_SYNTHETIC.json").read_bytes()
    assert send.generic(quote).status_code == 200
    orders = orders_for("salesforce_outbound:Opportunity:006xx0000000001AAA")
    assert len(orders) == 1
    order = orders[0]
    assert order.total == Decimal("1234.56")
    assert [line["line_total"] for line in order.lines] == ["899.91", "331.65", "3.00"]
    assert [line["sku"] for line in order.lines] == ["FAKE-SKU-100", "FAKE-SKU-200", "FAKE-SKU-SHIP"]
    # The second opportunity is not closed, so it has no order.
    assert orders_for("salesforce_outbound:Opportunity:006xx0000000002AAA") == []


def test_cpq_quote_before_opportunity(demo, send):
    quote = (FIXTURES / "salesforce_cpq_quote_discounted_lines_SYNTHETIC.json").read_bytes()
    send.generic(quote)
    xml = (FIXTURES / "salesforce_outbound_message_opportunity.xml").read_bytes()
    send.outbound(xml)
    orders = orders_for("salesforce_outbound:Opportunity:006xx0000000001AAA")
    assert len(orders) == 1
    assert len(orders[0].lines) == 3
    assert orders[0].total == Decimal("1234.56")


def test_outbound_redelivery_is_acknowledged_once(demo, send):
    xml = (FIXTURES / "salesforce_outbound_message_opportunity.xml").read_bytes()
    send.outbound(xml)
    response = send.outbound(xml)
    assert response.status_code == 200
    assert b"<Ack>true</Ack>" in response.content
    assert Delivery.objects.filter(status="accepted").count() == 1


@pytest.mark.parametrize(
    "name", ["pipedrive_webhook_v1_updated_deal.json", "pipedrive_webhook_v2_change_deal.json"]
)
def test_pipedrive_fixture_orders_deal(demo, send, name):
    response = send.pipedrive((FIXTURES / name).read_bytes())
    assert response.status_code == 200, response.content
    orders = orders_for("pipedrive:deal:9")
    assert len(orders) == 1
    assert orders[0].total == Decimal("1234.56")
    assert orders[0].currency == "EUR"
    assert str(orders[0].close_date) == "2025-02-17"


def test_pipedrive_v1_then_v2_same_change(demo, send):
    send.pipedrive((FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_bytes())
    send.pipedrive((FIXTURES / "pipedrive_webhook_v2_change_deal.json").read_bytes())
    assert len(orders_for("pipedrive:deal:9")) == 1
    assert Command.objects.exclude(state="superseded").count() == 1


def test_every_fixture_gives_one_order_per_won_deal(demo, send):
    send.hubspot((FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes())
    for name in (
        "salesforce_cdc_opportunity_create.json",
        "salesforce_cdc_opportunity_update_stage.json",
        "salesforce_cdc_opportunity_update_pubsub_decoded.json",
    ):
        send.salesforce_cdc((FIXTURES / name).read_bytes())
    send.outbound((FIXTURES / "salesforce_outbound_message_opportunity.xml").read_bytes())
    send.generic((FIXTURES / "salesforce_cpq_quote_discounted_lines_SYNTHETIC.json").read_bytes())
    send.pipedrive((FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_bytes())
    send.pipedrive((FIXTURES / "pipedrive_webhook_v2_change_deal.json").read_bytes())
    totals = dict(SandboxOrder.objects.values_list("crm_reference", "total"))
    assert totals == {
        "hubspot:deal:900000001": Decimal("1234.56"),
        "salesforce_cdc:Opportunity:006xx0000000001AAA": Decimal("1234.56"),
        "salesforce_outbound:Opportunity:006xx0000000001AAA": Decimal("1234.56"),
        "pipedrive:deal:9": Decimal("1234.56"),
    }
    assert ExceptionCase.objects.count() == 0
