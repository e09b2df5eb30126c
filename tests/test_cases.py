"""Each real-world sync failure as a test with its expected outcome."""

import json
from decimal import Decimal

import pytest

from exceptions.models import ExceptionCase
from exceptions.services.actions import retry_case
from meshline.money import line_total
from syncflows.connectors import DeliveryRequest, get_kind
from syncflows.models import (
    Command,
    Connector,
    LookupRow,
    SandboxOrder,
    SandboxProduct,
    SourceRecord,
)
from syncflows.models import Brief, BriefVersion, LookupTable, Trigger
from syncflows.demo import GENERIC_MAPPING, ORDER_SCHEMA, TOTAL_MATCHES_CRM
from syncflows.services.configuration import save_trigger
from tests.conftest import load_case, make_user

pytestmark = pytest.mark.django_db


def hubspot_event(event_id, prop, value, occurred_at, object_id=900000004, attempt=0):
    return {
        "eventId": event_id,
        "subscriptionId": 200001,
        "portalId": 1234567,
        "appId": 300001,
        "occurredAt": occurred_at,
        "subscriptionType": "deal.propertyChange",
        "attemptNumber": attempt,
        "objectId": object_id,
        "propertyName": prop,
        "propertyValue": value,
        "changeSource": "CRM_UI",
    }


def test_c01_triple_registration_orders_once(demo, send):
    case = load_case("C01-duplicate-delivery")
    statuses = [send.pipedrive(json.dumps(d).encode()).status_code for d in case["input"]["deliveries"]]
    expected = case["expected"]
    assert statuses == expected["http_responses"]
    orders = SandboxOrder.objects.all()
    assert orders.count() == expected["erp_sales_orders_created"]
    order = orders.get()
    assert order.crm_reference == expected["order"]["crm_ref"]
    assert order.total == Decimal(expected["order"]["total"])
    assert order.currency == expected["order"]["currency"]
    assert order.state == expected["order"]["state"]


def test_c02_late_older_stage_is_ignored(demo, send):
    case = load_case("C02-out-of-order")
    # The deal's amount is known before the two stage changes arrive.
    send.hubspot([hubspot_event(100000009, "amount", "500.00", 1717999000000, object_id=900000001)])
    responses = [send.hubspot([event]).status_code for event in case["input"]["arrivals"]]
    assert responses == [200, 200]
    expected = case["expected"]
    assert SandboxOrder.objects.count() == expected["erp_sales_orders_created"]
    assert SandboxOrder.objects.get().state == expected["order_state"]
    record = SourceRecord.objects.get(record_key="hubspot:deal:900000001")
    assert record.state["dealstage"] == expected["final_deal_stage_applied"]
    assert record.changes.filter(status="stale").count() == 1
    assert Command.objects.count() == 1


def test_c03_discount_rounds_once_at_line():
    case = load_case("C03-discount-unit-rounding")
    line = case["input"]["quote_line"]
    total = line_total(line["quantity"], line["unit_price"], line["currency"], line["discount_percent"])
    assert str(total) == case["expected"]["erp_line_subtotal"]
    assert total != Decimal("1176.09")


@pytest.fixture
def generic_deals(demo):
    """A generic connector for plain JSON deals with inline line items."""
    connector = Connector.objects.create(
        slug="deals-json",
        name="Deals as JSON",
        kind="generic",
        secrets=["whsec_deals"],
        settings={"object_type": "deal", "record_id_path": "id", "full_state": True},
    )
    trigger = save_trigger(
        Trigger(
            slug="json-deal",
            name="JSON deal",
            object_type="deal",
            connector=connector,
            condition="true",
        )
    )
    brief = Brief.objects.create(slug="json-deals", name="JSON deals", intent="Orders from JSON deals.")
    brief.triggers.add(trigger)
    BriefVersion.objects.create(
        brief=brief,
        number=1,
        state="active",
        mapping=GENERIC_MAPPING,
        command_schema=ORDER_SCHEMA,
        acceptance=[TOTAL_MATCHES_CRM],
    )
    return connector


def test_c03_discounted_line_through_pipeline(generic_deals, send):
    case = load_case("C03-discount-unit-rounding")
    line = case["input"]["quote_line"]
    deal = {
        "id": "900000003",
        "customer": "pipedrive:organization:201",
        "currency": "EUR",
        "line_items": [dict(line)],
    }
    assert send.generic(deal, secret="whsec_deals", slug="deals-json").status_code == 200
    order = SandboxOrder.objects.get()
    assert order.lines[0]["line_total"] == case["expected"]["erp_line_subtotal"]
    assert order.total == Decimal("1175.59")
    assert order.lines[0]["unit_price"] == "0.139"
    assert order.lines[0]["discount_percent"] == "15"


def test_c05_deal_currency_is_kept(demo, send):
    case = load_case("C05-currency-mismatch")
    deal = case["input"]["hubspot_deal"]
    events = [
        hubspot_event(100000050 + i, prop, value, 1718000000000 + i, object_id=int(deal["id"]))
        for i, (prop, value) in enumerate(deal["properties"].items())
    ]
    assert send.hubspot(events).status_code == 200
    order = SandboxOrder.objects.get()
    assert order.currency == case["expected"]["order"]["currency"]
    assert order.total == Decimal(case["expected"]["order"]["total"])
    assert SandboxOrder.objects.count() == case["expected"]["erp_sales_orders_created"]


def test_c05_disabled_currency_is_parked(demo, send):
    events = [
        hubspot_event(100000061, "amount", "30.00", 1718000000000),
        hubspot_event(100000062, "deal_currency_code", "GBP", 1718000000001),
        hubspot_event(100000063, "dealstage", "closedwon", 1718000000002),
    ]
    send.hubspot(events)
    assert SandboxOrder.objects.count() == 0
    case = ExceptionCase.objects.get()
    assert case.reason_code == "master_data_missing"
    assert "GBP" in case.message
    assert case.command.state == "failed"


def test_c05_missing_currency_without_default_is_parked(demo, send):
    Connector.objects.filter(slug="hubspot").update(default_currency="")
    send.hubspot(
        [
            hubspot_event(100000071, "amount", "30.00", 1718000000000),
            hubspot_event(100000072, "dealstage", "closedwon", 1718000000001),
        ]
    )
    assert SandboxOrder.objects.count() == 0
    case = ExceptionCase.objects.get()
    assert case.reason_code == "schema_invalid"
    assert "currency" in case.message


def test_c07_missing_mapping_blocks_then_retry(
    generic_deals, send, django_capture_on_commit_callbacks
):
    case = load_case("C07-missing-product-mapping")
    deal = case["input"]["closed_deal"]
    body = {**deal, "customer": "pipedrive:organization:201"}
    assert send.generic(body, secret="whsec_deals", slug="deals-json").status_code == 200
    expected = case["expected"]
    assert SandboxOrder.objects.count() == expected["erp_sales_orders_created"]
    exception = ExceptionCase.objects.get()
    assert exception.reason_code == "mapping_missing"
    assert exception.detail["key"] == "FAKE-SKU-404"
    assert exception.detail["table"] == "sku_map"
    assert "FAKE-SKU-404" in exception.message

    # Finance maps the CRM SKU to an ERP product, then retries the case.
    sandbox = SandboxProduct.objects.first().destination
    SandboxProduct.objects.create(destination=sandbox, code="FAKE-SKU-404-ERP", name="Replacement")
    LookupRow.objects.create(
        table=LookupTable.objects.get(slug="sku_map"), key="FAKE-SKU-404", value="FAKE-SKU-404-ERP"
    )
    finance = make_user("fay", "Finance")
    with django_capture_on_commit_callbacks(execute=True):
        retry_case(exception, acting_user=finance)
    after = expected["after_mapping_FAKE-SKU-404_and_retry"]
    order = SandboxOrder.objects.get()
    assert SandboxOrder.objects.count() == after["erp_sales_orders_created"]
    assert len(order.lines) == after["lines"]
    assert order.total == Decimal(after["total"])
    assert order.currency == after["currency"]
    exception.refresh_from_db()
    assert exception.state == "resolved"


def test_c09_lines_before_deal_give_one_order(demo, send):
    Connector.objects.create(
        slug="hubspot-lines",
        name="HubSpot line items relay",
        kind="generic",
        namespace="hubspot",
        default_currency="EUR",
        secrets=["whsec_lines"],
        settings={
            "object_type_path": "type",
            "object_type_map": {"line_item.creation": "line_item", "deal.creation": "deal"},
            "record_id_path": "deal_id",
            "record_id_paths": {"line_item": "line_item_id"},
            "full_state": True,
            "parents": {"line_item": {"type": "deal", "id_path": "deal_id"}},
        },
    )
    case = load_case("C09-multiline-partial")
    for arrival in case["input"]["arrivals"]:
        assert send.generic([arrival], secret="whsec_lines", slug="hubspot-lines").status_code == 200
    expected = case["expected"]
    assert SandboxOrder.objects.count() == expected["erp_sales_orders_created"]
    order = SandboxOrder.objects.get()
    assert order.crm_reference == expected["order"]["crm_ref"]
    assert len(order.lines) == expected["order"]["lines"]
    assert order.total == Decimal(expected["order"]["total"])
    assert order.currency == expected["order"]["currency"]
    assert len({line["shipment"] for line in order.lines}) == expected["order"]["deliveries"]


def test_c13_empty_string_clears_field(demo, send):
    case = load_case("C13-null-vs-empty-string")
    send.hubspot([hubspot_event(100000080, "closedate", "2024-10-01", 1718000000000, object_id=900000001)])
    read = case["input"]["hubspot_deal_read"]
    events = [
        hubspot_event(100000081 + i, prop, read["properties"][prop], 1718000001000 + i, object_id=900000001)
        for i, prop in enumerate(case["input"]["requested_properties"])
    ]
    send.hubspot(events)
    state = SourceRecord.objects.get(record_key="hubspot:deal:900000001").state
    assert "closedate" in state
    assert state["closedate"] is None
    assert state["po_number"] == "PO-FAKE-0001"
    assert state["amount"] == "1234.56"
    # A property that was not sent is unknown, so it stays absent.
    assert "dealname" not in state


def test_c14_signature_over_raw_bytes(demo):
    from datetime import UTC, datetime

    from django.utils.datastructures import CaseInsensitiveMapping

    case = load_case("C14-unicode-signature")
    data = case["input"]
    connector = Connector(
        slug="hubspot",
        kind="hubspot",
        secrets=[data["client_secret"]],
        settings={"public_url": data["uri"]},
    )
    request = DeliveryRequest(
        method=data["method"],
        url="http://127.0.0.1:8000/api/v1/inbound/hubspot/",
        headers=CaseInsensitiveMapping(data["headers"]),
        body=data["raw_body"].encode(),
        received_at=datetime.fromtimestamp(data["now_ms"] / 1000, tz=UTC),
    )
    kind = get_kind("hubspot")
    kind.verify(connector, request)  # raises when the signature is invalid
    events = kind.parse(connector, request)
    assert events[0].fields["name"] == case["expected"]["erp_partner"]["name"]
    assert f"hubspot:company:{events[0].record_id}" == case["expected"]["erp_partner"]["crm_ref"]


def test_c07_pricing_ops_fixes_in_one_step(
    generic_deals, send, django_capture_on_commit_callbacks
):
    from exceptions.services.fixes import add_lookup_row_and_retry

    case = load_case("C07-missing-product-mapping")
    body = {**case["input"]["closed_deal"], "customer": "pipedrive:organization:201"}
    send.generic(body, secret="whsec_deals", slug="deals-json")
    exception = ExceptionCase.objects.get()
    sandbox = SandboxProduct.objects.first().destination
    SandboxProduct.objects.create(destination=sandbox, code="FAKE-SKU-404-ERP", name="Replacement")
    pricing = make_user("pia", "Pricing Ops")
    with django_capture_on_commit_callbacks(execute=True):
        add_lookup_row_and_retry(
            exception, acting_user=pricing, key="FAKE-SKU-404", value="FAKE-SKU-404-ERP"
        )
    order = SandboxOrder.objects.get()
    assert order.total == Decimal("1234.56")
    assert [line["sku"] for line in order.lines] == ["FAKE-SKU-100", "FAKE-SKU-404-ERP"]
    exception.refresh_from_db()
    assert exception.state == "resolved"


def test_negative_amount_is_held_for_review(demo, send):
    send.hubspot(
        [
            hubspot_event(100000091, "amount", "-50.00", 1718000000000),
            hubspot_event(100000092, "dealstage", "closedwon", 1718000000001),
        ]
    )
    assert SandboxOrder.objects.count() == 0
    case = ExceptionCase.objects.get()
    assert case.reason_code == "acceptance_failed"
    assert case.detail["actual"] == "-50.00"
