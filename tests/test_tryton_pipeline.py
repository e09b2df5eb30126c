"""CRM fixture deals through the whole pipeline into a real trytond server.

Every test here sends deliveries to the inbound endpoint (or stores them with
``receive``) and checks the result in Tryton over JSON-RPC. The trytond server
lives for the whole test session, so each test uses deals that no other test
sends, and counts only the sales created after the test started.
"""

import json
import threading
import time
from datetime import date
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone
from django.utils.datastructures import CaseInsensitiveMapping

from exceptions.models import ExceptionCase
from syncflows.adapters.tryton import FINISHED_SALE_STATES
from syncflows.adapters.tryton_rpc import TrytonRPC
from syncflows.connectors import DeliveryRequest
from syncflows.demo import load_demo_configuration
from syncflows.management.commands import setup_tryton
from syncflows.models import Command, Connector, Destination, LedgerEntry, Route
from syncflows.services.dispatch import close_adapters, dispatch_due
from syncflows.services.pipeline import process_changes
from syncflows.services.receive import receive
from tests.conftest import FIXTURES

pytest_plugins = ["tests.tryton_plugin"]
pytestmark = pytest.mark.tryton

OUTAGE_DEALS = 60
# Upper bounds for the loops of the outage test, never timing assertions.
OUTAGE_DEADLINE_SECONDS = 600
FIRST_SALES_BEFORE_OUTAGE = 8


@pytest.fixture(scope="module")
def rpc(tryton_server):
    client = TrytonRPC(
        tryton_server.url,
        tryton_server.database,
        tryton_server.login,
        tryton_server.password,
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def password_file(tryton_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("tryton-secret") / "admin-password"
    path.write_text(tryton_server.password + "\n")
    path.chmod(0o600)
    return path


def destination_settings(server, password_file) -> dict:
    return {
        "url": server.url,
        "database": server.database,
        "login": server.login,
        "password_file": str(password_file),
        "timeout": 20,
    }


@pytest.fixture
def tryton_demo(db, tryton_server, password_file):
    connectors = load_demo_configuration(
        destination_adapter="tryton",
        destination_settings=destination_settings(tryton_server, password_file),
    )
    yield connectors
    # Adapters are cached per thread and hold an HTTP session to trytond.
    close_adapters()


@pytest.fixture
def watermark(rpc):
    """The highest sale id before the test: later sales belong to the test."""
    return last_sale_id(rpc)


def last_sale_id(rpc) -> int:
    ids = rpc.model("sale.sale", "search", [], 0, 1, [["id", "DESC"]])
    return ids[0] if ids else 0


SALE_READ = [
    "reference",
    "description",
    "state",
    "sale_date",
    "untaxed_amount",
    "invoices",
    "currency.code",
    "party.code",
]


def sales_since(rpc, watermark: int, description=None) -> list[dict]:
    domain = [["id", ">", watermark]]
    if description is not None:
        domain.append(["description", "=", description])
    return rpc.model(
        "sale.sale", "search_read", domain, 0, None, [["id", "ASC"]], SALE_READ
    )


def invoices_of(rpc, sale) -> list[dict]:
    fields = ["untaxed_amount", "state", "type", "currency.code"]
    return rpc.model("account.invoice", "read", sale["invoices"], fields)


def command_for(crm_reference: str) -> Command:
    return Command.objects.exclude(state=Command.State.SUPERSEDED).get(
        record__record_key=crm_reference
    )


def assert_one_sale(rpc, watermark, crm_reference, amount, currency="EUR") -> dict:
    """Check that the deal is one confirmed sale whose invoice has its amount."""
    command = command_for(crm_reference)
    assert command.state == Command.State.SUCCEEDED, command.last_error
    sales = sales_since(rpc, watermark, crm_reference)
    assert len(sales) == 1, sales
    sale = sales[0]
    assert sale["reference"] == command.idempotency_key
    assert command.erp_reference == f"sale.sale:{sale['id']}"
    key_count = rpc.model(
        "sale.sale", "search_count", [["reference", "=", command.idempotency_key]]
    )
    assert key_count == 1
    assert sale["state"] in FINISHED_SALE_STATES
    assert sale["currency."]["code"] == currency
    assert str(sale["untaxed_amount"]) == amount
    invoices = invoices_of(rpc, sale)
    assert len(invoices) == 1
    assert invoices[0]["type"] == "out"
    assert invoices[0]["currency."]["code"] == currency
    assert str(invoices[0]["untaxed_amount"]) == amount
    return sale


def fixture_json(name: str):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def pipedrive_v1_copy(deal_id: int, value, currency: str = "EUR") -> bytes:
    """The Pipedrive v1 fixture as a different won deal of organisation 201."""
    body = fixture_json("pipedrive_webhook_v1_updated_deal.json")
    body["meta"]["id"] = deal_id
    body["meta"]["timestamp_micro"] += deal_id
    for state in (body["current"], body["previous"]):
        state["id"] = deal_id
        state["currency"] = currency
        state["value"] = value
    text = json.dumps(body)
    if isinstance(value, str):
        # Pipedrive sends the value as a JSON number; a string placeholder keeps
        # trailing zeros such as 24.690 that a Python float would drop.
        text = text.replace(json.dumps(value), value)
    return text.encode()


# Fixture deals, one test each.


def test_hubspot_batch_one_sale(tryton_demo, send, rpc, watermark):
    body = (FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes()

    response = send.hubspot(body)

    assert response.status_code == 200, response.content
    sale = assert_one_sale(rpc, watermark, "hubspot:deal:900000001", "1234.56")
    # The deal names no company, so the brief created the customer.
    assert sale["party."]["code"] == "hubspot:deal:900000001"
    # The batch carries no close date, so Tryton dated the sale on confirm.
    assert isinstance(sale["sale_date"], date)
    assert command_for("hubspot:deal:900000001").payload["close_date"] is None
    assert len(sales_since(rpc, watermark)) == 1
    assert ExceptionCase.objects.count() == 0


def test_salesforce_cdc_one_sale(tryton_demo, send, rpc, watermark):
    for name in (
        "salesforce_cdc_opportunity_create.json",
        "salesforce_cdc_opportunity_update_stage.json",
        "salesforce_cdc_opportunity_update_pubsub_decoded.json",
    ):
        response = send.salesforce_cdc((FIXTURES / name).read_bytes())
        assert response.status_code == 200, response.content

    reference = "salesforce_cdc:Opportunity:006xx0000000001AAA"
    sale = assert_one_sale(rpc, watermark, reference, "1234.56")
    assert sale["party."]["code"] == "salesforce_cdc:Account:001xx0000000001AAA"
    assert sale["sale_date"].isoformat() == "2024-09-30"
    assert len(sales_since(rpc, watermark)) == 1
    assert ExceptionCase.objects.count() == 0


def create_party(rpc, code: str, name: str) -> None:
    if not rpc.model("party.party", "search", [["code", "=", code]]):
        values = {"name": name, "code": code, "addresses": [["create", [{}]]]}
        rpc.model("party.party", "create", [values])


def test_outbound_cpq_discounted_sale(tryton_demo, send, rpc, watermark):
    # NOTE: setup_tryton creates no party for the Outbound Message account,
    # and the Salesforce brief creates no missing customers, so the test adds
    # the party itself. test_tryton_has_demo_customers covers that gap.
    customer = "salesforce_outbound:Account:001xx0000000001AAA"
    create_party(rpc, customer, "Example Widgets Ltd (FAKE)")
    xml = (FIXTURES / "salesforce_outbound_message_opportunity.xml").read_bytes()
    quote = (
        FIXTURES / "salesforce_cpq_quote_discounted_lines_SYNTHETIC.json"
    ).read_bytes()

    assert send.outbound(xml).status_code == 200
    assert sales_since(rpc, watermark) == []
    assert send.generic(quote).status_code == 200

    reference = "salesforce_outbound:Opportunity:006xx0000000001AAA"
    sale = assert_one_sale(rpc, watermark, reference, "1234.56")
    assert sale["party."]["code"] == customer
    lines = rpc.model(
        "sale.line",
        "search_read",
        [["sale", "=", sale["id"]]],
        0,
        None,
        [["sequence", "ASC"], ["id", "ASC"]],
        ["product.code", "quantity", "amount"],
    )
    # Discounted lines are the undiscounted line plus a discount line.
    codes = [(line["product."] or {}).get("code") for line in lines]
    assert codes == ["FAKE-SKU-100", None, "FAKE-SKU-200", None, "FAKE-SKU-SHIP"]
    gross_and_discount = [
        lines[0]["amount"] + lines[1]["amount"],
        lines[2]["amount"] + lines[3]["amount"],
        lines[4]["amount"],
    ]
    assert gross_and_discount == [
        Decimal("899.91"),
        Decimal("331.65"),
        Decimal("3.00"),
    ]
    # The second opportunity of the message is not closed.
    second = "salesforce_outbound:Opportunity:006xx0000000002AAA"
    assert sales_since(rpc, watermark, second) == []
    assert len(sales_since(rpc, watermark)) == 1
    assert ExceptionCase.objects.count() == 0


def test_tryton_has_demo_customers():
    from syncflows.demo import CUSTOMERS

    demo_references = {reference for reference, _ in CUSTOMERS}
    tryton_codes = {code for code, _, _ in setup_tryton.CUSTOMERS}

    assert demo_references - tryton_codes == set()


def test_pipedrive_v1_then_v2_one_sale(tryton_demo, send, rpc, watermark):
    for name in (
        "pipedrive_webhook_v1_updated_deal.json",
        "pipedrive_webhook_v2_change_deal.json",
    ):
        response = send.pipedrive((FIXTURES / name).read_bytes())
        assert response.status_code == 200, response.content

    sale = assert_one_sale(rpc, watermark, "pipedrive:deal:9", "1234.56")
    assert sale["party."]["code"] == "pipedrive:organization:201"
    assert sale["sale_date"].isoformat() == "2025-02-17"
    assert len(sales_since(rpc, watermark)) == 1
    assert ExceptionCase.objects.count() == 0


def test_pipedrive_v2_alone_one_sale(tryton_demo, send, rpc, watermark):
    body = fixture_json("pipedrive_webhook_v2_change_deal.json")
    body["meta"]["id"] = "0b1f2c3d-0000-4000-8000-000000000019"
    body["meta"]["entity_id"] = "19"
    body["data"]["id"] = 19

    response = send.pipedrive(json.dumps(body).encode())

    assert response.status_code == 200, response.content
    sale = assert_one_sale(rpc, watermark, "pipedrive:deal:19", "1234.56")
    assert sale["party."]["code"] == "pipedrive:organization:201"
    assert sale["sale_date"].isoformat() == "2025-02-17"
    assert ExceptionCase.objects.count() == 0


@pytest.mark.parametrize(
    ("deal_id", "value", "currency"),
    [(9101, 3000, "JPY"), (9102, "24.690", "KWD")],
)
def test_minor_unit_currency_sale(
    tryton_demo, send, rpc, watermark, deal_id, value, currency
):
    response = send.pipedrive(pipedrive_v1_copy(deal_id, value, currency))

    assert response.status_code == 200, response.content
    reference = f"pipedrive:deal:{deal_id}"
    assert_one_sale(rpc, watermark, reference, str(value), currency)
    assert command_for(reference).payload["total"] == str(value)
    assert ExceptionCase.objects.count() == 0


# The demo routed to Tryton.


def demo_command_options(server, password_file) -> list[str]:
    return [
        "--no-users",
        "--erp",
        "tryton",
        "--tryton-url",
        server.url,
        "--tryton-database",
        server.database,
        "--tryton-login",
        server.login,
        "--tryton-password-file",
        str(password_file),
    ]


def test_load_demo_erp_tryton_sale(
    db, send, rpc, watermark, tryton_server, password_file
):
    call_command("load_demo", *demo_command_options(tryton_server, password_file))

    destination = Destination.objects.get(slug="tryton")
    assert destination.adapter == "tryton"
    assert destination.settings["url"] == tryton_server.url
    assert destination.settings["password_file"] == str(password_file)
    route = Route.objects.get(business_unit="", region="", object_type="")
    assert route.destination == destination
    response = send.pipedrive(pipedrive_v1_copy(7001, "2500.00"))
    close_adapters()

    assert response.status_code == 200, response.content
    assert_one_sale(rpc, watermark, "pipedrive:deal:7001", "2500.00")


def test_load_demo_tryton_from_environment(
    db, send, rpc, watermark, tryton_server, password_file, monkeypatch
):
    monkeypatch.setenv("MESHLINE_DEMO_ERP", "tryton")
    monkeypatch.setenv("MESHLINE_DEMO_TRYTON_URL", tryton_server.url)
    monkeypatch.setenv("MESHLINE_DEMO_TRYTON_DATABASE", tryton_server.database)
    monkeypatch.setenv("MESHLINE_DEMO_TRYTON_LOGIN", tryton_server.login)
    monkeypatch.setenv("MESHLINE_DEMO_TRYTON_PASSWORD_FILE", str(password_file))

    call_command("load_demo", "--no-users")
    response = send.pipedrive(pipedrive_v1_copy(7002, "99.99"))
    close_adapters()

    assert response.status_code == 200, response.content
    assert Route.objects.get(object_type="").destination.slug == "tryton"
    assert_one_sale(rpc, watermark, "pipedrive:deal:7002", "99.99")


def test_load_demo_default_is_sandbox(db, monkeypatch):
    monkeypatch.delenv("MESHLINE_DEMO_ERP", raising=False)

    call_command("load_demo", "--no-users")

    assert Route.objects.get(object_type="").destination.slug == "sandbox"
    assert not Destination.objects.filter(adapter="tryton").exists()


def test_load_demo_unknown_erp_rejected(db, monkeypatch):
    monkeypatch.setenv("MESHLINE_DEMO_ERP", "odoo")

    with pytest.raises(CommandError) as caught:
        call_command("load_demo", "--no-users")

    assert "'odoo'" in str(caught.value)
    assert "MESHLINE_DEMO_ERP" in str(caught.value)
    assert not Route.objects.exists()


def test_load_demo_missing_password_file(db, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CommandError) as caught:
        call_command(
            "load_demo",
            "--no-users",
            "--erp",
            "tryton",
            "--tryton-password-file",
            str(missing),
        )

    assert str(missing) in str(caught.value)
    assert "setup_tryton" in str(caught.value)
    assert not Destination.objects.filter(adapter="tryton").exists()


# A trytond outage in the middle of a run with real, parallel dispatch.


def store_delivery(connector, body: bytes) -> list[int]:
    request = DeliveryRequest(
        method="POST",
        url=f"file://tests/{connector.slug}",
        headers=CaseInsensitiveMapping({"Content-Type": "application/json"}),
        body=body,
        received_at=timezone.now(),
        source="file",
        verified=True,
    )
    result = receive(connector, request)
    assert result.status == "accepted"
    return result.change_ids


def outage_amount(index: int) -> str:
    return f"{100 + index * 7}.{index % 100:02d}"


class DispatchLoop(threading.Thread):
    """Dispatch with four threads until no command is open or the deadline passes."""

    def __init__(self, deadline: float):
        super().__init__(name="outage-dispatch", daemon=True)
        self.deadline = deadline
        self.error: BaseException | None = None

    def run(self):
        try:
            while time.monotonic() < self.deadline:
                if not Command.objects.filter(state__in=Command.OPEN_STATES).exists():
                    return
                if not dispatch_due(concurrency=4):
                    time.sleep(0.2)
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            close_adapters()
            connections.close_all()


def wait_for_sales(rpc, watermark, count: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        created = len(sales_since(rpc, watermark))
        if created >= count:
            return created
        time.sleep(0.2)
    raise AssertionError(f"Tryton had fewer than {count} new sales by the deadline")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_outage_mid_run_books_each_deal_once(
    settings, tryton_server, password_file, rpc, watermark
):
    settings.MESHLINE_SYNC_PIPELINE = False
    settings.MESHLINE_BACKOFF_BASE_SECONDS = 1
    settings.MESHLINE_BACKOFF_MAX_SECONDS = 4
    settings.MESHLINE_MAX_ATTEMPTS = 1000
    load_demo_configuration(
        destination_adapter="tryton",
        destination_settings=destination_settings(tryton_server, password_file),
    )
    pipedrive = Connector.objects.get(slug="pipedrive")
    deal_ids = [5000 + index for index in range(OUTAGE_DEALS)]
    amounts = {
        f"pipedrive:deal:{deal_id}": outage_amount(index)
        for index, deal_id in enumerate(deal_ids)
    }
    change_ids = []
    for index, deal_id in enumerate(deal_ids):
        body = pipedrive_v1_copy(deal_id, outage_amount(index))
        change_ids += store_delivery(pipedrive, body)
    command_ids = process_changes(change_ids)
    assert len(command_ids) == OUTAGE_DEALS

    deadline = time.monotonic() + OUTAGE_DEADLINE_SECONDS
    loop = DispatchLoop(deadline)
    loop.start()
    try:
        before_outage = wait_for_sales(
            rpc, watermark, FIRST_SALES_BEFORE_OUTAGE, deadline
        )
        tryton_server.stop()
        open_during_outage = Command.objects.filter(
            state__in=Command.OPEN_STATES
        ).count()
        time.sleep(2)
    finally:
        tryton_server.start()
    loop.join(max(0.0, deadline - time.monotonic()))

    assert not loop.is_alive(), "dispatch did not finish by the deadline"
    assert loop.error is None, loop.error
    assert before_outage < OUTAGE_DEALS
    assert open_during_outage > 0
    retries = LedgerEntry.objects.filter(step=LedgerEntry.Step.RETRY)
    assert retries.exists()
    assert set(retries.values_list("reason_code", flat=True)) == {"erp_unavailable"}
    states = set(Command.objects.values_list("state", flat=True))
    assert states == {Command.State.SUCCEEDED}
    assert Command.objects.count() == OUTAGE_DEALS
    assert ExceptionCase.objects.count() == 0

    sales = sales_since(rpc, watermark)
    per_deal: dict[str, list] = {}
    for sale in sales:
        per_deal.setdefault(sale["description"], []).append(sale)
    assert sorted(per_deal) == sorted(amounts)
    assert {ref: len(found) for ref, found in per_deal.items()} == dict.fromkeys(
        amounts, 1
    )
    booked = {ref: str(found[0]["untaxed_amount"]) for ref, found in per_deal.items()}
    assert booked == amounts
    unfinished = [s["id"] for s in sales if s["state"] not in FINISHED_SALE_STATES]
    assert unfinished == []
    keys = set(Command.objects.values_list("idempotency_key", flat=True))
    assert {sale["reference"] for sale in sales} == keys
