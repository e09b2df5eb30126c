"""The shared CRM fixtures end to end with read-back, into a real trytond 8.2.

Each webhook fixture names a deal; the fake CRM API contains the whole deal with
its line items; the order that reaches Tryton carries the lines read back.
"""

from decimal import Decimal

import pytest

from syncflows.adapters.tryton_rpc import TrytonRPC
from syncflows.demo import SALESFORCE_MAPPING, load_demo_configuration
from syncflows.models import Command, Destination, RecordAlias, SourceRecord
from tests.conftest import FIXTURES
from tests.fakes.hubspot_api import FakeHubSpot
from tests.fakes.pipedrive_api import FakePipedrive
from tests.fakes.salesforce_api import VERSION, FakeSalesforce
from tests.test_readback_pipeline import (  # noqa: F401  (no_waits is an autouse fixture)
    HUBSPOT_READ_BACK,
    READ_BACK_MAPPING,
    no_waits,
    use_read_back,
)

pytest_plugins = ["tests.tryton_plugin"]
pytestmark = [pytest.mark.tryton, pytest.mark.django_db]


@pytest.fixture
def tryton_demo(db, tryton_server):
    connectors = load_demo_configuration(
        "tryton",
        {
            "url": tryton_server.url,
            "database": tryton_server.database,
            "login": tryton_server.login,
            "timeout": 20,
        },
    )
    Destination.objects.filter(slug="tryton").update(
        credentials={"password": tryton_server.password}
    )
    return connectors


@pytest.fixture
def rpc(tryton_server):
    client = TrytonRPC(
        tryton_server.url,
        tryton_server.database,
        tryton_server.login,
        tryton_server.password,
    )
    yield client
    client.close()


def sale_lines(rpc, command) -> list[dict]:
    sale_id = int(command.erp_reference.split(":")[1])
    (sale,) = rpc.model("sale.sale", "read", [sale_id], ["lines"])
    lines = rpc.model(
        "sale.line", "read", sale["lines"], ["product", "quantity", "unit_price"]
    )
    return sorted(lines, key=lambda line: line["id"])


def only_command(record_key) -> Command:
    (command,) = Command.objects.filter(record__record_key=record_key)
    return command


def test_hubspot_fixture_reads_back_lines(tryton_demo, send, rpc):
    with FakeHubSpot() as fake:
        use_read_back(
            fake, "hubspot", "hubspot-won-deals", HUBSPOT_READ_BACK, READ_BACK_MAPPING
        )
        fake.add_deal(
            900000001,
            {
                "dealname": "FAKE-Deal Example",
                "amount": "1234.56",
                "deal_currency_code": "EUR",
                "dealstage": "closedwon",
                "closedate": "2024-09-30",
            },
            line_items=[
                {
                    "id": "700000001",
                    "name": "Widget",
                    "hs_sku": "FAKE-SKU-100",
                    "quantity": "2",
                    "price": "500.00",
                },
                {
                    "id": "700000002",
                    "name": "Widget",
                    "hs_sku": "FAKE-SKU-200",
                    "quantity": "1",
                    "price": "234.56",
                },
            ],
            companies=[{"id": "800000001", "name": "Yllä Esimerkki Oy (FAKE)"}],
        )
        fake.merge("deals", 900000001, 900000003)

        response = send.hubspot(
            (FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes()
        )

    assert response.status_code == 200
    command = only_command("hubspot:deal:900000001")
    assert command.state == Command.State.SUCCEEDED
    assert command.result["untaxed_amount"] == "1234.56"
    lines = sale_lines(rpc, command)
    assert [line["quantity"] for line in lines] == [2.0, 1.0]
    assert [line["unit_price"] for line in lines] == [
        Decimal("500.00"),
        Decimal("234.56"),
    ]
    assert list(RecordAlias.objects.values_list("alias_id", flat=True)) == ["900000003"]


def test_salesforce_cdc_fixtures_read_back_quote(tryton_demo, send, rpc):
    with FakeSalesforce(batch_size=1) as fake:
        fake.add(
            "Opportunity",
            Id="006xx0000000001AAA",
            Name="FAKE-Deal Example Widgets 2024-Q3",
            Amount=Decimal("1234.56"),
            CurrencyIsoCode="EUR",
            CloseDate="2024-09-30",
            StageName="Closed Won",
            AccountId="001xx0000000001AAA",
            HasOpportunityLineItem=False,
        )
        fake.add(
            "Account",
            Id="001xx0000000001AAA",
            Name="Acme Testing GmbH (FAKE)",
            AccountNumber="A-1",
        )
        fake.add(
            "SBQQ__Quote__c",
            Id="a0pxx0000000001AAA",
            Name="Q-00001",
            SBQQ__Primary__c=True,
            SBQQ__Opportunity2__c="006xx0000000001AAA",
            CurrencyIsoCode="EUR",
            SBQQ__NetAmount__c=Decimal("1234.56"),
        )
        for number, code, quantity, price in (
            (1, "FAKE-SKU-100", "2.0", "500.00"),
            (2, "FAKE-SKU-200", "1.0", "234.56"),
        ):
            fake.add(
                "SBQQ__QuoteLine__c",
                Id=f"a0qxx000000000{number}AAA",
                SBQQ__Quote__c="a0pxx0000000001AAA",
                SBQQ__Number__c=number,
                SBQQ__ProductCode__c=code,
                SBQQ__ProductName__c=code,
                # Salesforce sends double fields such as quantities as 2.0.
                SBQQ__Quantity__c=Decimal(quantity),
                SBQQ__RegularPrice__c=Decimal(price),
                SBQQ__Discount__c=None,
                SBQQ__AdditionalDiscountAmount__c=None,
            )
        use_read_back(
            fake,
            "salesforce_cdc",
            "salesforce-won-opportunities",
            {"associations": ["Account", "quotes"]},
            SALESFORCE_MAPPING,
            crm="salesforce",
            api_version=VERSION,
        )
        for name in (
            "salesforce_cdc_opportunity_create.json",
            "salesforce_cdc_opportunity_update_stage.json",
            "salesforce_cdc_opportunity_update_pubsub_decoded.json",
        ):
            assert (
                send.salesforce_cdc((FIXTURES / name).read_bytes()).status_code == 200
            )

        pages = [key for key in fake.count if "/query/" in key[1]]

    command = only_command("salesforce_cdc:Opportunity:006xx0000000001AAA")
    assert command.state == Command.State.SUCCEEDED
    assert command.result["untaxed_amount"] == "1234.56"
    assert len(sale_lines(rpc, command)) == 2
    assert all(fake.count[key] == 1 for key in pages)
    record = SourceRecord.objects.get(
        record_key="salesforce_cdc:Opportunity:006xx0000000001AAA"
    )
    assert record.state["Account"]["Name"] == "Acme Testing GmbH (FAKE)"


PIPEDRIVE_MAPPING = {
    "crm_reference": "event.record_key",
    "customer": '{"reference": "pipedrive:organization:" + string(record.org_id), "name": record.title}',
    "currency": "record.currency",
    "close_date": "has(record.won_time) && record.won_time != null ? record.won_time.substring(0, 10) : null",
    "crm_amount": "string(record.value)",
    "lines": (
        'children.product.map(p, {"sku": lookup("sku_map", p.code), "description": p.name,'
        ' "quantity": string(p.quantity), "unit_price": p.item_price})'
    ),
}


def test_pipedrive_v2_fixture_reads_back_products(tryton_demo, send, rpc):
    with FakePipedrive() as fake:
        fake.add_deal(
            9,
            {
                "title": "FAKE-Deal Example Widgets",
                "value": Decimal("1234.56"),
                "currency": "EUR",
                "status": "won",
                "org_id": 201,
                "org_name": "Example Widgets Ltd (FAKE)",
                "won_time": "2025-02-17 21:22:41",
            },
            [
                {
                    "code": "FAKE-SKU-100",
                    "name": "Widget",
                    "item_price": Decimal("500.00"),
                    "quantity": 2,
                },
                {
                    "code": "FAKE-SKU-200",
                    "name": "Widget",
                    "item_price": Decimal("234.56"),
                    "quantity": 1,
                },
            ],
        )
        use_read_back(
            fake,
            "pipedrive",
            "pipedrive-won-deals",
            {"associations": ["products"]},
            PIPEDRIVE_MAPPING,
        )

        response = send.pipedrive(
            (FIXTURES / "pipedrive_webhook_v2_change_deal.json").read_bytes()
        )

    assert response.status_code == 200
    command = only_command("pipedrive:deal:9")
    assert command.state == Command.State.SUCCEEDED
    assert command.result["untaxed_amount"] == "1234.56"
    assert len(sale_lines(rpc, command)) == 2
