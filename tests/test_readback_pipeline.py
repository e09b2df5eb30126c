"""Read-back in the pipeline: a webhook names a deal, the CRM client reads the
deal and its line items, and the brief maps what was read into one order."""

from datetime import UTC, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from exceptions.models import ExceptionCase
from syncflows.crm import http as crm_http
from syncflows.crm import pacing
from syncflows.crm.auth import clear_token_cache
from syncflows.demo import HUBSPOT_MAPPING
from syncflows.models import (
    BriefVersion,
    Connector,
    ConnectorApiAccess,
    ConnectorHealth,
    LedgerEntry,
    RecordChange,
    SandboxOrder,
    SourceRecord,
    SyncRun,
)
from syncflows.services.readback import retry_deferred_reads
from tests.fakes.hubspot_api import FakeHubSpot, _cursor
from tests.fakes.pipedrive_api import FakePipedrive

pytestmark = pytest.mark.django_db

# The demo HubSpot brief, mapped over what read-back stores: line items with
# HubSpot's own property names and the associated companies.
READ_BACK_MAPPING = {
    **HUBSPOT_MAPPING,
    "customer": (
        '{"reference": has(record.companies) && size(record.companies) > 0'
        ' ? "hubspot:company:" + record.companies[0].id : "hubspot:deal:" + event.record_id,'
        ' "name": has(record.companies) && size(record.companies) > 0'
        " ? record.companies[0].name : null}"
    ),
    "lines": (
        'children.line_item.map(l, {"sku": lookup("sku_map", l.hs_sku), "description": l.name,'
        ' "quantity": l.quantity, "unit_price": l.price,'
        ' "discount_percent": l.hs_discount_percentage})'
    ),
}
HUBSPOT_READ_BACK = {
    "properties": [
        "dealname",
        "amount",
        "deal_currency_code",
        "dealstage",
        "closedate",
    ],
    "associations": ["line_items", "companies"],
}
ASSOCIATIONS = "/crm/v4/objects/deals/{}/associations/line_items"


@pytest.fixture(autouse=True)
def no_waits(monkeypatch, settings):
    """Record retry waits on a clock that moves only when the client waits."""
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


def use_read_back(
    fake,
    connector_slug,
    brief_slug,
    read_back,
    mapping=None,
    *,
    oauth=False,
    crm=None,
    **options,
):
    """Point a demo connector's API access at ``fake`` and make the brief read back."""
    connector = Connector.objects.get(slug=connector_slug)
    access = ConnectorApiAccess.objects.create(
        connector=connector,
        crm=crm or connector.kind,
        base_url=fake.url,
        token_url=f"{fake.url}{fake.token_path}",
        auth_type="oauth" if oauth else "token",
        credentials=fake.credentials(oauth),
        requests_per_second=Decimal("0"),
        **options,
    )
    version = BriefVersion.objects.get(
        brief__slug=brief_slug, state=BriefVersion.State.ACTIVE
    )
    version.read_back = read_back
    if mapping is not None:
        version.mapping = mapping
    version.save()
    return access


@pytest.fixture
def hubspot(demo):
    with FakeHubSpot() as fake:
        use_read_back(
            fake, "hubspot", "hubspot-won-deals", HUBSPOT_READ_BACK, READ_BACK_MAPPING
        )
        yield fake


def add_hubspot_deal(
    fake, deal_id, lines, *, price="10.00", skus=("FAKE-SKU-100", "FAKE-SKU-200")
):
    items = [
        {
            "id": f"7{deal_id % 1000:03d}{index:05d}",
            "name": f"Line {index + 1}",
            "hs_sku": skus[index % len(skus)],
            "quantity": "1",
            "price": price,
            "hs_discount_percentage": "",
        }
        for index in range(lines)
    ]
    amount = str(Decimal(price) * lines)
    fake.add_deal(
        deal_id,
        {
            "dealname": f"FAKE-Deal {deal_id}",
            "amount": amount,
            "deal_currency_code": "EUR",
            "dealstage": "closedwon",
            "closedate": "2026-11-30",
        },
        line_items=items,
        companies=[{"id": "800000001", "name": "Yllä Esimerkki Oy (FAKE)"}],
    )
    return amount


def won_event(
    deal_id,
    occurred_at_ms=1764496800000,
    event_id=None,
    prop="dealstage",
    value="closedwon",
):
    return {
        "eventId": event_id or deal_id % 100000,
        "subscriptionId": 200001,
        "portalId": 1234567,
        "appId": 300001,
        "occurredAt": occurred_at_ms,
        "subscriptionType": "deal.propertyChange",
        "attemptNumber": 0,
        "objectId": deal_id,
        "propertyName": prop,
        "propertyValue": value,
        "changeSource": "CRM_UI",
    }


def test_250_lines_across_pages_with_429(hubspot, send, no_waits):
    add_hubspot_deal(hubspot, 900000250, 250)
    hubspot.rate_limit(
        ASSOCIATIONS.format(900000250), after=_cursor(100), retry_after=2
    )

    response = send.hubspot([won_event(900000250)])

    assert response.status_code == 200
    order = SandboxOrder.objects.get()
    assert SandboxOrder.objects.count() == 1
    assert order.crm_reference == "hubspot:deal:900000250"
    assert len(order.lines) == 250
    assert order.total == Decimal("2500.00")
    assert order.customer.reference == "hubspot:company:800000001"
    path = ASSOCIATIONS.format(900000250)
    pages = [
        ("GET", path, ""),
        ("GET", path, _cursor(100)),
        ("GET", path, _cursor(200)),
    ]
    assert [hubspot.count[page] for page in pages] == [1, 2, 1]
    assert [hubspot.served[page] for page in pages] == [1, 1, 1]
    assert len(no_waits) == 1
    record = SourceRecord.objects.get(record_key="hubspot:deal:900000250")
    assert (
        record.children.filter(object_type="line_item", is_deleted=False).count() == 250
    )
    assert record.state["companies"][0]["name"] == "Yllä Esimerkki Oy (FAKE)"
    read_rows = LedgerEntry.objects.filter(
        record_key=record.record_key, message__startswith="Read back"
    )
    assert read_rows.count() == 1
    assert "250 line_item" in read_rows.get().message
    health = ConnectorHealth.objects.get(connector__slug="hubspot")
    assert health.rate_limit_hits == 1
    assert health.last_read_ok_at is not None
    assert health.recent_errors[0]["reason_code"] == "rate_limited"


def test_read_time_is_field_version(hubspot, send):
    add_hubspot_deal(hubspot, 900000251, 2)
    before = timezone.now()
    send.hubspot([won_event(900000251)])

    record = SourceRecord.objects.get(record_key="hubspot:deal:900000251")
    version = record.field_versions["amount"]
    assert record.state["amount"] == "20.00"
    assert version[0] >= before.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    # A webhook that occurred before the read is older than the read values.
    older = int((before - timedelta(hours=1)).timestamp() * 1000)
    send.hubspot([won_event(900000251, older, event_id=2, prop="amount", value="1.00")])
    record.refresh_from_db()
    assert record.state["amount"] == "20.00"

    # A webhook that occurred after the read wins, until the next read.
    later = int((timezone.now() + timedelta(hours=1)).timestamp() * 1000)
    hubspot.objects["deals"]["900000251"]["amount"] = "30.00"
    send.hubspot(
        [won_event(900000251, later, event_id=3, prop="amount", value="25.00")]
    )
    record.refresh_from_db()
    assert record.state["amount"] == "25.00"


def test_token_expiry_mid_batch_refreshes_once(demo, send):
    with FakeHubSpot() as fake:
        access = use_read_back(
            fake,
            "hubspot",
            "hubspot-won-deals",
            HUBSPOT_READ_BACK,
            READ_BACK_MAPPING,
            oauth=True,
        )
        access.access_token = {"token": fake.issue_token()}
        access.token_expires_at = timezone.now() + timedelta(minutes=30)
        access.save()
        for deal_id in (900000261, 900000262, 900000263):
            add_hubspot_deal(fake, deal_id, 3)
        # Each deal takes 5 calls (the deal, 2 association lists and 2 batch
        # reads), so the token expires inside the second deal's read.
        fake.expire_after(6)

        events = [
            won_event(d, event_id=i + 1)
            for i, d in enumerate((900000261, 900000262, 900000263))
        ]
        send.hubspot(events)

        assert fake.token_requests == 1
        assert SandboxOrder.objects.count() == 3
        assert sorted(len(order.lines) for order in SandboxOrder.objects.all()) == [
            3,
            3,
            3,
        ]
        access.refresh_from_db()
        assert access.access_token["token"] in fake.access_tokens
        assert (
            ConnectorHealth.objects.get(connector=access.connector).token_refreshes == 1
        )


def test_second_auth_failure_opens_case(hubspot, send):
    add_hubspot_deal(hubspot, 900000270, 2)
    ConnectorApiAccess.objects.filter(connector__slug="hubspot").update(
        credentials={"token": "revoked"}
    )

    send.hubspot([won_event(900000270)])

    assert SandboxOrder.objects.count() == 0
    run = SyncRun.objects.get(record__record_key="hubspot:deal:900000270")
    assert run.state == SyncRun.State.FAILED
    assert run.reason_code == "auth_failed"
    case = ExceptionCase.objects.get()
    assert case.reason_code == "auth_failed"
    assert "hubspot" in case.message
    health = ConnectorHealth.objects.get(connector__slug="hubspot")
    assert health.auth_failed_at is not None
    assert health.last_read_ok_at is None


def test_outage_defers_and_retries(hubspot, send, django_capture_on_commit_callbacks):
    add_hubspot_deal(hubspot, 900000280, 3)
    ConnectorApiAccess.objects.filter(connector__slug="hubspot").update(max_attempts=2)
    body = {
        "status": "error",
        "message": "Service unavailable",
        "category": "SERVICE_UNAVAILABLE",
    }
    hubspot.fail("GET", ASSOCIATIONS.format(900000280), 503, body, times=2)

    send.hubspot([won_event(900000280)])

    assert SandboxOrder.objects.count() == 0
    run = SyncRun.objects.get(record__record_key="hubspot:deal:900000280")
    assert run.reason_code == "crm_unavailable"
    assert run.error_detail["transient"] is True
    assert run.error_detail["deferral"] == 1
    change = RecordChange.objects.get(record__record_key="hubspot:deal:900000280")
    assert change.state["dealstage"] == "closedwon"

    # Not yet due: nothing runs.
    with django_capture_on_commit_callbacks(execute=True):
        assert retry_deferred_reads(now=timezone.now()) == 0
    assert SandboxOrder.objects.count() == 0

    later = timezone.now() + timedelta(minutes=2)
    with django_capture_on_commit_callbacks(execute=True):
        assert retry_deferred_reads(now=later) == 1
    order = SandboxOrder.objects.get()
    assert len(order.lines) == 3
    assert order.total == Decimal("30.00")

    with django_capture_on_commit_callbacks(execute=True):
        assert retry_deferred_reads(now=later + timedelta(hours=1)) == 0
    assert SandboxOrder.objects.count() == 1
    run.refresh_from_db()
    assert run.state == SyncRun.State.SUPERSEDED


def test_deferred_retry_gives_up(hubspot, send, django_capture_on_commit_callbacks):
    add_hubspot_deal(hubspot, 900000281, 1)
    ConnectorApiAccess.objects.filter(connector__slug="hubspot").update(max_attempts=1)
    hubspot.fail(
        "GET", "/crm/v3/objects/deals/900000281", 503, {"message": "down"}, times=100
    )

    send.hubspot([won_event(900000281)])
    moment = timezone.now()
    for _ in range(8):
        moment += timedelta(hours=2)
        with django_capture_on_commit_callbacks(execute=True):
            retry_deferred_reads(now=moment)

    runs = SyncRun.objects.filter(record__record_key="hubspot:deal:900000281").order_by(
        "id"
    )
    assert runs.count() == 6
    last = runs.last()
    assert last.state == SyncRun.State.FAILED
    assert last.error_detail["deferral"] == 6
    assert "retry_at" not in last.error_detail
    assert SandboxOrder.objects.count() == 0


def test_pipedrive_deal_with_products(demo, send):
    mapping = {
        "crm_reference": "event.record_key",
        "customer": '{"reference": "pipedrive:organization:" + string(record.org_id), "name": record.org_name}',
        "currency": "record.currency",
        "crm_amount": "string(record.value)",
        "lines": (
            'children.product.map(p, {"sku": lookup("sku_map", p.code), "description": p.name,'
            ' "quantity": string(p.quantity), "unit_price": p.item_price})'
        ),
    }
    with FakePipedrive() as fake:
        products = [
            {
                "code": "FAKE-SKU-100",
                "name": "Widget",
                "item_price": Decimal("12.50"),
                "quantity": 2,
            }
            for _ in range(120)
        ]
        fake.add_deal(
            1042,
            {
                "title": "FAKE-Deal 1042",
                "value": Decimal("3000.00"),
                "currency": "EUR",
                "status": "won",
                "org_id": 201,
                "org_name": "Example Widgets Ltd (FAKE)",
            },
            products,
        )
        use_read_back(
            fake,
            "pipedrive",
            "pipedrive-won-deals",
            {"associations": ["products"]},
            mapping,
        )
        webhook = {
            "meta": {
                "action": "updated",
                "object": "deal",
                "id": 1042,
                "host": "example.pipedrive.com",
                "timestamp_micro": 1764496800000000,
                "v": 1,
            },
            "current": {
                "id": 1042,
                "status": "won",
                "update_time": "2026-11-30 10:00:00",
            },
            "previous": {"id": 1042, "status": "open"},
            "event": "updated.deal",
        }

        send.pipedrive(webhook)

        order = SandboxOrder.objects.get()
        assert len(order.lines) == 120
        assert order.total == Decimal("3000.00")
        assert order.customer.reference == "pipedrive:organization:201"
        assert [
            fake.count[("GET", "/api/v1/deals/1042/products", s)] for s in ("0", "100")
        ] == [1, 1]


def test_health_page_shows_connector(hubspot, send, client):
    from django.contrib.auth.models import Group

    from tests.conftest import make_user

    Group.objects.get_or_create(name="Viewer")
    add_hubspot_deal(hubspot, 900000290, 1)
    hubspot.rate_limit("/crm/v3/objects/deals/900000290", retry_after=2)
    send.hubspot([won_event(900000290)])
    client.force_login(make_user("vera", "Viewer"))

    response = client.get("/connectors/health/")

    assert response.status_code == 200
    health = {row["connector"].slug: row for row in response.context["rows"]}
    assert health["hubspot"]["health"].rate_limit_hits == 1
    assert health["hubspot"]["last_delivery_at"] is not None
    assert health["pipedrive"]["health"] is None
    html = response.content.decode()
    assert "rate_limited" in html
    assert hubspot.api_token not in html


def test_health_page_needs_login(client):
    response = client.get("/connectors/health/")

    assert response.status_code == 302


def test_read_back_links_line_items(hubspot, send):
    add_hubspot_deal(hubspot, 900000295, 1)
    send.hubspot([won_event(900000295)])

    child = SourceRecord.objects.get(record_key="hubspot:line_item:729500000")
    assert child.parent.record_key == "hubspot:deal:900000295"
    assert child.parent_ref == "hubspot:deal:900000295"
    assert child.state["hs_sku"] == "FAKE-SKU-100"
    assert child.field_versions["price"] == child.parent.field_versions["amount"]


def test_admin_never_shows_credentials(hubspot, client, django_user_model):
    admin_user = django_user_model.objects.create_superuser(
        "root", "root@example.com", "pw"
    )
    client.force_login(admin_user)
    access = ConnectorApiAccess.objects.get(connector__slug="hubspot")
    url = f"/admin/syncflows/connectorapiaccess/{access.pk}/change/"

    page = client.get(url)

    assert page.status_code == 200
    html = page.content.decode()
    assert hubspot.api_token not in html
    assert "token" in page.context["adminform"].form.fields
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data = {name: "" if value is None else value for name, value in data.items()}
    data.update(token="", base_url=hubspot.url, token_url="", settings="{}")
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    access.refresh_from_db()
    assert access.credentials == {"token": hubspot.api_token}
