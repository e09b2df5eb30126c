"""The CRM read-back clients against local fakes of the HubSpot, Salesforce and
Pipedrive APIs: paging, 429 with Retry-After, token refresh, merges, deletions."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from syncflows.crm import CrmError, ReadRequest, RecordNotFound, get_client, pacing
from syncflows.crm import http as crm_http
from syncflows.crm.auth import clear_token_cache
from syncflows.models import Connector, ConnectorApiAccess
from tests.fakes.hubspot_api import FakeHubSpot, _cursor
from tests.fakes.pipedrive_api import FakePipedrive
from tests.fakes.salesforce_api import VERSION, FakeSalesforce

pytestmark = pytest.mark.django_db

LINE_ITEMS = ReadRequest(
    properties=("amount", "dealstage"), associations=("line_items", "companies")
)


@pytest.fixture(autouse=True)
def recorded_waits(monkeypatch, settings):
    """Record the waits of retries and pacing instead of sleeping, on a clock
    that moves only when the client waits."""
    waits, now = [], [1000.0]

    def fake_sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    # The in-process pacer runs on this clock; the shared ones use the
    # server's clock and are tested in tests/test_crm_pacing.py.
    settings.MESHLINE_CRM_PACER = "process"
    monkeypatch.setattr(crm_http, "sleep", fake_sleep)
    monkeypatch.setattr(pacing, "sleep", fake_sleep)
    monkeypatch.setattr(pacing, "clock", lambda: now[0])
    clear_token_cache()
    pacing.reset_pacers()
    yield waits
    clear_token_cache()
    pacing.reset_pacers()


def api_access(fake, crm, *, oauth=False, slug=None, **options) -> ConnectorApiAccess:
    kinds = {
        "hubspot": "hubspot",
        "salesforce": "salesforce_cdc",
        "pipedrive": "pipedrive",
    }
    connector = Connector.objects.create(
        slug=slug or f"{crm}-api", name=crm, kind=kinds[crm]
    )
    values = {
        "connector": connector,
        "crm": crm,
        "base_url": fake.url,
        "auth_type": "oauth" if oauth else "token",
        "credentials": fake.credentials(oauth),
        "requests_per_second": Decimal("0"),
        "api_version": VERSION if crm == "salesforce" else "",
        # Never the CRM's real token endpoint: tests talk to 127.0.0.1 only.
        "token_url": f"{fake.url}{fake.token_path}",
        **options,
    }
    return ConnectorApiAccess.objects.create(**values)


def hubspot_deal(fake, deal_id, lines, **properties):
    line_items = [
        {
            "id": f"7{index:08d}",
            "hs_sku": "FAKE-SKU-100",
            "quantity": "1",
            "price": "10.00",
            "name": "",
        }
        for index in range(lines)
    ]
    fake.add_deal(
        deal_id,
        {"amount": "2500.00", "dealstage": "closedwon", **properties},
        line_items=line_items,
        companies=[{"id": "800000001", "name": "Yllä Esimerkki Oy (FAKE)"}],
    )


def test_hubspot_250_lines_with_429_on_page_2(recorded_waits):
    with FakeHubSpot() as fake:
        hubspot_deal(fake, 900000250, 250)
        associations = "/crm/v4/objects/deals/900000250/associations/line_items"
        fake.rate_limit(associations, after=_cursor(100), retry_after=2)
        client = get_client(api_access(fake, "hubspot"))

        result = client.read("deal", "900000250", LINE_ITEMS)

        assert len(result.children) == 250
        assert len({child.record_id for child in result.children}) == 250
        assert result.children[0].object_type == "line_item"
        assert result.children[0].fields == {
            "name": None,
            "hs_sku": "FAKE-SKU-100",
            "quantity": "1",
            "price": "10.00",
            "amount": None,
            "discount": None,
            "hs_discount_percentage": None,
            "hs_product_id": None,
        }
        assert result.fields == {"amount": "2500.00", "dealstage": "closedwon"}
        assert result.related["companies"] == [
            {"id": "800000001", "name": "Yllä Esimerkki Oy (FAKE)", "domain": None}
        ]
        pages = [
            ("GET", associations, ""),
            ("GET", associations, _cursor(100)),
            ("GET", associations, _cursor(200)),
        ]
        assert [fake.count[page] for page in pages] == [1, 2, 1]
        assert [fake.served[page] for page in pages] == [1, 1, 1]
        batches = [
            key
            for key in fake.count
            if key[1] == "/crm/v3/objects/line_items/batch/read"
        ]
        assert len(batches) == 3
        assert [fake.count[key] for key in batches] == [1, 1, 1]
        assert len(recorded_waits) == 1
        assert 2 <= recorded_waits[0] <= 2.2
        assert client.stats["rate_limited"] == 1


def test_hubspot_empty_property_is_none():
    with FakeHubSpot() as fake:
        fake.add_deal(
            900000001,
            {"closedate": "", "po_number": "PO-FAKE-0001", "amount": "1234.56"},
        )
        client = get_client(api_access(fake, "hubspot"))
        request = ReadRequest(properties=("closedate", "po_number", "amount"))

        result = client.read("deal", "900000001", request)

        assert result.fields == {
            "closedate": None,
            "po_number": "PO-FAKE-0001",
            "amount": "1234.56",
        }


def test_hubspot_token_expiry_refreshes_once(django_capture_on_commit_callbacks):
    with FakeHubSpot() as fake:
        hubspot_deal(fake, 900000250, 250)
        access = api_access(
            fake,
            "hubspot",
            oauth=True,
            access_token={"token": fake.issue_token()},
            token_expires_at=timezone.now() + timedelta(minutes=30),
        )
        fake.expire_after(2)  # the deal and the first association page succeed
        client = get_client(access)

        with django_capture_on_commit_callbacks(execute=True):
            result = client.read("deal", "900000250", LINE_ITEMS)

        assert len(result.children) == 250
        assert fake.token_requests == 1
        assert client.stats["refreshes"] == 1
        associations = "/crm/v4/objects/deals/900000250/associations/line_items"
        assert fake.count[("GET", associations, "")] == 1
        assert fake.count[("GET", associations, _cursor(100))] == 2
        assert fake.served[("GET", associations, _cursor(100))] == 1
        access.refresh_from_db()
        assert access.access_token["token"] in fake.access_tokens


def test_hubspot_second_401_is_auth_failed():
    with FakeHubSpot() as fake:
        hubspot_deal(fake, 900000250, 3)
        body = {
            "status": "error",
            "message": "expired",
            "category": "EXPIRED_AUTHENTICATION",
        }
        fake.fail("GET", "/crm/v3/objects/deals/900000250", 401, body, times=2)
        access = api_access(
            fake, "hubspot", oauth=True, access_token={"token": fake.issue_token()}
        )
        client = get_client(access)

        with pytest.raises(CrmError) as caught:
            client.read("deal", "900000250", LINE_ITEMS)

        assert caught.value.reason_code == "auth_failed"
        assert caught.value.crm_code == "EXPIRED_AUTHENTICATION"
        assert fake.token_requests == 1
        assert fake.count[("GET", "/crm/v3/objects/deals/900000250", "")] == 2


def test_hubspot_private_token_401_no_refresh():
    with FakeHubSpot() as fake:
        hubspot_deal(fake, 900000250, 1)
        access = api_access(fake, "hubspot", credentials={"token": "revoked-token"})

        with pytest.raises(CrmError) as caught:
            get_client(access).read("deal", "900000250", LINE_ITEMS)

        assert caught.value.reason_code == "auth_failed"
        assert fake.token_requests == 0


def test_hubspot_merged_id_returns_survivor():
    with FakeHubSpot() as fake:
        hubspot_deal(fake, 900000001, 1)
        hubspot_deal(fake, 900000003, 1)
        fake.merge("deals", 900000001, 900000003)

        result = get_client(api_access(fake, "hubspot")).read(
            "deal", "900000003", LINE_ITEMS
        )

        assert result.record_id == "900000001"


def test_hubspot_deleted_deal_not_found():
    with FakeHubSpot() as fake:
        client = get_client(api_access(fake, "hubspot"))

        with pytest.raises(RecordNotFound) as caught:
            client.read("deal", "900000404", LINE_ITEMS)

        assert caught.value.reason_code == "record_deleted"
        assert caught.value.transient is False


def test_hubspot_search_pages_results():
    with FakeHubSpot() as fake:
        hubspot_deal(fake, 900000250, 0)
        for index in range(5):
            fake.objects["line_items"][f"71000000{index}"] = {"hs_sku": "FAKE-SKU-200"}
        fake.objects["line_items"]["719999999"] = {"hs_sku": "FAKE-SKU-100"}
        client = get_client(api_access(fake, "hubspot", page_size=2))

        found = client.search("line_items", {"hs_sku": "FAKE-SKU-200"}, ["hs_sku"])

        assert [item_id for item_id, _ in found] == [f"71000000{i}" for i in range(5)]
        assert found[0][1] == {"hs_sku": "FAKE-SKU-200"}
        path = "/crm/v3/objects/line_items/search"
        assert [fake.count[("POST", path, after)] for after in ("", "2", "4")] == [
            1,
            1,
            1,
        ]


def test_hubspot_outage_exhausts_attempts(recorded_waits):
    with FakeHubSpot() as fake:
        hubspot_deal(fake, 900000250, 1)
        fake.fail(
            "GET",
            "/crm/v3/objects/deals/",
            503,
            {"status": "error", "message": "down"},
            times=9,
        )
        client = get_client(api_access(fake, "hubspot", max_attempts=3))

        with pytest.raises(CrmError) as caught:
            client.read("deal", "900000250", LINE_ITEMS)

        assert caught.value.reason_code == "crm_unavailable"
        assert caught.value.transient is True
        assert fake.count[("GET", "/crm/v3/objects/deals/900000250", "")] == 3
        assert len(recorded_waits) == 2


def test_retry_after_over_maximum_wait_defers(recorded_waits):
    with FakeHubSpot() as fake:
        hubspot_deal(fake, 900000250, 1)
        fake.rate_limit("/crm/v3/objects/deals/", retry_after=120)
        client = get_client(api_access(fake, "hubspot", max_wait_seconds=30))

        with pytest.raises(CrmError) as caught:
            client.read("deal", "900000250", LINE_ITEMS)

        assert caught.value.reason_code == "rate_limited"
        assert caught.value.retry_after >= 120
        assert recorded_waits == []


def salesforce_opportunity(fake, lines=5):
    fake.add(
        "Account",
        Id="001xx0000000001AAA",
        Name="Example Widgets Ltd (FAKE)",
        AccountNumber="A-1",
    )
    fake.add(
        "Opportunity",
        Id="006xx0000000001AAA",
        Name="FAKE-Deal",
        Amount=Decimal("1234.56"),
        CurrencyIsoCode="EUR",
        CloseDate="2024-09-30",
        StageName="Closed Won",
        AccountId="001xx0000000001AAA",
        HasOpportunityLineItem=True,
    )
    for index in range(lines):
        fake.add(
            "OpportunityLineItem",
            Id=f"00kxx00000000{index:02d}AAA",
            OpportunityId="006xx0000000001AAA",
            ProductCode="FAKE-SKU-100",
            Name="Widget",
            Quantity=Decimal("2.0"),
            UnitPrice=Decimal("99.99"),
            ListPrice=Decimal("99.99"),
            Discount=None,
            TotalPrice=Decimal("199.98"),
            SortOrder=index,
        )


SALESFORCE_READ = ReadRequest(associations=("OpportunityLineItems", "Account"))


def test_salesforce_pages_line_items_with_limit_error():
    with FakeSalesforce(batch_size=2) as fake:
        salesforce_opportunity(fake, lines=5)
        fake.limit_exceeded()
        client = get_client(api_access(fake, "salesforce"))

        result = client.read("Opportunity", "006xx0000000001AAA", SALESFORCE_READ)

        assert result.fields["Amount"] == "1234.56"
        assert result.related["Account"] == {
            "Name": "Example Widgets Ltd (FAKE)",
            "AccountNumber": "A-1",
        }
        assert [child.fields["SortOrder"] for child in result.children] == [
            0,
            1,
            2,
            3,
            4,
        ]
        assert result.children[0].fields["UnitPrice"] == "99.99"
        assert "attributes" not in result.children[0].fields
        assert client.stats["rate_limited"] == 1
        next_pages = [key for key in fake.count if "/query/" in key[1]]
        assert len(next_pages) == 2
        assert all(fake.count[key] == 1 for key in next_pages)


def test_salesforce_invalid_session_refreshes_once():
    with FakeSalesforce(batch_size=2) as fake:
        salesforce_opportunity(fake, lines=5)
        access = api_access(
            fake, "salesforce", oauth=True, access_token={"token": fake.issue_token()}
        )
        fake.expire_after(2)  # the opportunity and the first line-item page succeed
        client = get_client(access)

        result = client.read("Opportunity", "006xx0000000001AAA", SALESFORCE_READ)

        assert len(result.children) == 5
        assert fake.token_requests == 1
        assert client.stats["errors"][0]["crm_code"] == "INVALID_SESSION_ID"


def test_salesforce_cpq_quote_as_quote_model():
    with FakeSalesforce() as fake:
        salesforce_opportunity(fake, lines=0)
        fake.add(
            "SBQQ__Quote__c",
            Id="a0pxx0000000001AAA",
            Name="Q-1",
            SBQQ__Primary__c=True,
            SBQQ__Opportunity2__c="006xx0000000001AAA",
            CurrencyIsoCode="EUR",
        )
        for number, code in ((2, "FAKE-SKU-200"), (1, "FAKE-SKU-100")):
            fake.add(
                "SBQQ__QuoteLine__c",
                Id=f"a0qxx000000000{number}AAA",
                SBQQ__Quote__c="a0pxx0000000001AAA",
                SBQQ__Number__c=number,
                SBQQ__ProductCode__c=code,
                SBQQ__Quantity__c=Decimal("1"),
                SBQQ__RegularPrice__c=Decimal("500.00"),
                SBQQ__Discount__c=Decimal("10.0"),
            )
        request = ReadRequest(associations=("quotes",))

        result = get_client(api_access(fake, "salesforce")).read(
            "Opportunity", "006xx0000000001AAA", request
        )

        (quote,) = result.children
        assert quote.object_type == "SBQQ__Quote__c"
        assert quote.fields["record"]["Name"] == "Q-1"
        codes = [
            line["record"]["SBQQ__ProductCode__c"] for line in quote.fields["lineItems"]
        ]
        assert codes == ["FAKE-SKU-100", "FAKE-SKU-200"]
        assert quote.fields["lineItems"][0]["record"]["SBQQ__Discount__c"] == "10.0"


def test_salesforce_deleted_opportunity_not_found():
    with FakeSalesforce() as fake:
        with pytest.raises(RecordNotFound):
            get_client(api_access(fake, "salesforce")).read(
                "Opportunity", "006xx0000000009AAA", SALESFORCE_READ
            )


def test_salesforce_rejects_injected_id():
    with FakeSalesforce() as fake:
        with pytest.raises(CrmError) as caught:
            get_client(api_access(fake, "salesforce")).read(
                "Opportunity", "x' OR Id != '", SALESFORCE_READ
            )
        assert caught.value.reason_code == "schema_invalid"
        assert sum(fake.count.values()) == 0


def test_pipedrive_products_across_pages_with_429(recorded_waits):
    with FakePipedrive() as fake:
        products = [
            {
                "product_id": 5,
                "name": "Widget",
                "item_price": Decimal("10.50"),
                "quantity": 1,
                "discount": 0,
                "discount_type": "percentage",
            }
            for _ in range(250)
        ]
        fake.add_deal(
            1001,
            {
                "title": "FAKE-Deal",
                "value": Decimal("2625.00"),
                "currency": "EUR",
                "status": "won",
                "org_id": 201,
                "org_name": "Example Widgets Ltd (FAKE)",
            },
            products,
        )
        fake.rate_limit("/api/v1/deals/1001/products", after="100", retry_after=1)
        client = get_client(api_access(fake, "pipedrive"))

        result = client.read("deal", "1001", ReadRequest(associations=("products",)))

        assert len(result.children) == 250
        assert result.children[0].fields["item_price"] == "10.50"
        assert result.fields["org_id"] == 201
        assert result.fields["org_name"] == "Example Widgets Ltd (FAKE)"
        path = "/api/v1/deals/1001/products"
        assert [fake.count[("GET", path, start)] for start in ("0", "100", "200")] == [
            1,
            2,
            1,
        ]
        assert len(recorded_waits) == 1


def test_pipedrive_oauth_basic_refresh():
    with FakePipedrive() as fake:
        fake.add_deal(
            1002,
            {
                "title": "FAKE",
                "value": Decimal("1"),
                "currency": "EUR",
                "status": "won",
            },
        )
        client = get_client(api_access(fake, "pipedrive", oauth=True))

        result = client.read("deal", "1002", ReadRequest())

        assert result.fields["status"] == "won"
        assert fake.token_requests == 1


def test_pipedrive_deleted_deal_not_found():
    with FakePipedrive() as fake:
        fake.add_deal(1003, {"title": "FAKE", "status": "deleted"})
        with pytest.raises(RecordNotFound):
            get_client(api_access(fake, "pipedrive")).read(
                "deal", "1003", ReadRequest()
            )

