"""The tryton adapter against a real trytond 8.2 server on a cached database."""

import secrets
import threading
from decimal import Decimal

import pytest

from syncflows.adapters import AdapterError, CommandData, get_adapter
from syncflows.adapters.tryton_rpc import TrytonRPC, tryton_error
from syncflows.models import Destination

# Loads the session fixture ``tryton_server``. pytest registers a plugin module
# once, so listing it in the root conftest as well is harmless.
pytest_plugins = ["tests.tryton_plugin"]
pytestmark = pytest.mark.tryton


def new_key() -> str:
    return secrets.token_hex(32)


def order(*lines, currency="EUR", customer="hubspot:company:800000001", total=None):
    if total is None:
        total = str(sum(Decimal(line["line_total"]) for line in lines))
    return {
        "crm_reference": "hubspot:deal:900000001",
        "customer": {"reference": customer, "name": "Yllä Esimerkki Oy"},
        "currency": currency,
        "close_date": "2024-09-30",
        "customer_po": "PO-FAKE-0001",
        "lines": list(lines),
        "total": total,
    }


def line(sku, quantity, unit_price, line_total, **extra):
    return {
        "sku": sku,
        "description": f"{sku} test line",
        "quantity": quantity,
        "unit_price": unit_price,
        "line_total": line_total,
        **extra,
    }


def command(payload, key=None, **options):
    return CommandData(
        idempotency_key=key or new_key(),
        command_type="sales_order.create",
        payload=payload,
        options=options,
    )


@pytest.fixture(scope="module")
def adapter(tryton_server):
    destination = Destination(
        slug="tryton",
        adapter="tryton",
        settings={
            "url": tryton_server.url,
            "database": tryton_server.database,
            "login": tryton_server.login,
            "timeout": 20,
        },
        credentials={"password": tryton_server.password},
    )
    adapter = get_adapter(destination)
    yield adapter
    adapter.close()


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


def count(rpc, model, domain=()):
    return rpc.model(model, "search_count", list(domain))


def two_line_order():
    return order(
        line("FAKE-SKU-100", "10", "99.99", "899.91", discount_percent="10"),
        line("FAKE-SKU-SHIP", "1", "15.00", "15.00"),
    )


def test_execute_two_line_eur_order(adapter, rpc):
    key = new_key()
    sales_before = count(rpc, "sale.sale")

    result = adapter.execute(command(two_line_order(), key))

    assert count(rpc, "sale.sale") == sales_before + 1
    assert result.reference == f"sale.sale:{result.data['sale_id']}"
    assert result.document_number == result.data["sale_number"]
    assert result.data["sale_state"] == "processing"
    assert result.data["untaxed_amount"] == "914.91"
    assert len(result.data["invoice_ids"]) == 1
    (invoice,) = rpc.model(
        "account.invoice",
        "read",
        result.data["invoice_ids"],
        ["untaxed_amount", "tax_amount", "total_amount", "state"],
    )
    assert invoice["untaxed_amount"] == Decimal("914.91")
    assert invoice["total_amount"] == invoice["untaxed_amount"] + invoice["tax_amount"]
    assert invoice["state"] == "draft"
    (sale,) = rpc.model(
        "sale.sale",
        "read",
        [result.data["sale_id"]],
        ["reference", "description", "sale_date", "party.code", "comment"],
    )
    assert sale["reference"] == key
    assert sale["description"] == "hubspot:deal:900000001"
    assert sale["sale_date"].isoformat() == "2024-09-30"
    assert sale["party."]["code"] == "hubspot:company:800000001"
    assert sale["comment"] == "Customer PO: PO-FAKE-0001"


def test_find_existing_returns_same_sale(adapter, rpc):
    key = new_key()
    assert adapter.find_existing(key) is None
    created = adapter.execute(command(two_line_order(), key))
    sales_after_create = count(rpc, "sale.sale")

    found = adapter.find_existing(key)
    again = adapter.execute(command(two_line_order(), key))

    assert found == created
    assert again == created
    assert count(rpc, "sale.sale") == sales_after_create
    assert count(rpc, "sale.sale", [["reference", "=", key]]) == 1


def test_discount_rounds_once_at_line(adapter, rpc):
    payload = order(
        line("FAKE-SKU-BOLT", "9950", "0.139", "1175.59", discount_percent="15"),
        total="1175.59",
    )

    preflight = adapter.preflight(command(payload))
    result = adapter.execute(command(payload))

    assert preflight["untaxed_amount"] == "1175.59"
    assert result.data["untaxed_amount"] == "1175.59"
    lines = rpc.model(
        "sale.line",
        "search_read",
        [["sale", "=", result.data["sale_id"]]],
        0,
        None,
        [["id", "ASC"]],
        ["product", "unit_price", "amount"],
    )
    assert [row["amount"] for row in lines] == [Decimal("1383.05"), Decimal("-207.46")]
    assert lines[0]["unit_price"] == Decimal("0.139")
    assert lines[1]["product"] is None
    info = adapter.fetch_invoice(result.reference)
    assert info.total == "1175.59"


@pytest.mark.parametrize(
    ("currency", "quantity", "unit_price", "expected"),
    [("JPY", "3", "1000", "3000"), ("KWD", "2", "12.345", "24.690")],
)
def test_minor_units_exact(adapter, currency, quantity, unit_price, expected):
    payload = order(
        line("FAKE-SKU-200", quantity, unit_price, expected),
        currency=currency,
        total=expected,
    )

    result = adapter.execute(command(payload))
    info = adapter.fetch_invoice(result.reference)

    assert result.data["currency"] == currency
    assert result.data["untaxed_amount"] == expected
    assert info.currency == currency
    assert info.total == expected


def test_unknown_currency_is_master_data(adapter):
    payload = order(line("FAKE-SKU-100", "1", "10", "10"), currency="CHF")

    with pytest.raises(AdapterError) as caught:
        adapter.preflight(command(payload))

    assert caught.value.reason_code == "master_data_missing"
    assert caught.value.detail == {"currency": "CHF"}
    assert caught.value.transient is False


def test_unknown_sku_is_mapping_missing(adapter, rpc):
    payload = order(line("FAKE-SKU-NOPE", "1", "10.00", "10.00"))
    sales_before = count(rpc, "sale.sale")

    with pytest.raises(AdapterError) as caught:
        adapter.execute(command(payload))

    assert caught.value.reason_code == "mapping_missing"
    assert caught.value.detail["sku"] == "FAKE-SKU-NOPE"
    assert "FAKE-SKU-NOPE" in caught.value.message
    assert count(rpc, "sale.sale") == sales_before


def test_tax_code_maps_to_tax_name(adapter):
    known = order(line("FAKE-SKU-100", "1", "100.00", "100.00", tax_code="VAT 24%"))
    unknown = order(line("FAKE-SKU-100", "1", "100.00", "100.00", tax_code="VAT-XX"))

    totals = adapter.preflight(command(known))
    with pytest.raises(AdapterError) as caught:
        adapter.preflight(command(unknown))

    assert totals["tax_amount"] == "24.00"
    assert caught.value.reason_code == "mapping_missing"
    assert caught.value.detail == {"tax_code": "VAT-XX", "sku": "FAKE-SKU-100"}


def test_float_amount_is_schema_invalid(adapter):
    payload = order(line("FAKE-SKU-100", "1", 99.99, "99.99"), total="99.99")

    with pytest.raises(AdapterError) as caught:
        adapter.preflight(command(payload))

    assert caught.value.reason_code == "schema_invalid"
    assert "float" in caught.value.message


def test_unknown_customer_is_master_data(adapter, rpc):
    reference = f"hubspot:company:{secrets.randbelow(10**9)}"
    payload = order(line("FAKE-SKU-100", "1", "99.99", "99.99"), customer=reference)

    with pytest.raises(AdapterError) as caught:
        adapter.execute(command(payload))

    assert caught.value.reason_code == "master_data_missing"
    assert caught.value.detail == {"customer_reference": reference}
    assert count(rpc, "party.party", [["code", "=", reference]]) == 0


def test_missing_customer_created_when_allowed(adapter, rpc):
    reference = f"hubspot:company:{secrets.randbelow(10**9)}"
    payload = order(line("FAKE-SKU-100", "1", "99.99", "99.99"), customer=reference)

    preflight = adapter.preflight(command(payload, create_missing_customers=True))
    assert count(rpc, "party.party", [["code", "=", reference]]) == 0
    result = adapter.execute(command(payload, create_missing_customers=True))

    assert preflight["customer_would_be_created"] is True
    assert preflight["untaxed_amount"] == "99.99"
    parties = rpc.model(
        "party.party",
        "search_read",
        [["code", "=", reference]],
        0,
        None,
        None,
        ["name"],
    )
    assert [party["name"] for party in parties] == ["Yllä Esimerkki Oy"]
    assert result.data["untaxed_amount"] == "99.99"


def test_preflight_writes_nothing(adapter, rpc):
    counts_before = [
        count(rpc, model) for model in ("sale.sale", "sale.line", "party.party")
    ]

    totals = adapter.preflight(command(two_line_order()))

    counts_after = [
        count(rpc, model) for model in ("sale.sale", "sale.line", "party.party")
    ]
    assert counts_after == counts_before
    assert totals["line_count"] == 2
    assert totals["tryton_line_count"] == 3
    assert totals["untaxed_amount"] == "914.91"
    assert totals["tax_amount"] == "219.58"
    assert totals["total_amount"] == "1134.49"


def test_preflight_total_mismatch(adapter):
    payload = order(line("FAKE-SKU-100", "2", "99.99", "199.98"), total="199.99")

    with pytest.raises(AdapterError) as caught:
        adapter.preflight(command(payload))

    assert caught.value.reason_code == "acceptance_failed"
    assert caught.value.detail == {"expected": "199.99", "actual": "199.98"}


def test_compensate_cancels_and_is_idempotent(adapter, rpc):
    result = adapter.execute(command(two_line_order()))
    stored = {"reference": result.reference, **result.data}

    first = adapter.compensate(stored)
    second = adapter.compensate(stored)

    assert first["status"] == "compensated"
    assert second["status"] == "already_compensated"
    invoices = rpc.model(
        "account.invoice", "read", result.data["invoice_ids"], ["state"]
    )
    assert [invoice["state"] for invoice in invoices] == ["cancelled"]
    (sale,) = rpc.model(
        "sale.sale", "read", [result.data["sale_id"]], ["invoice_state", "state"]
    )
    assert sale["invoice_state"] == "none"
    assert sale["state"] == "done"
    shipments = rpc.model(
        "stock.shipment.out", "read", result.data["shipment_ids"], ["state"]
    )
    assert [shipment["state"] for shipment in shipments] == ["cancelled"]
    info = adapter.fetch_invoice(result.reference)
    assert info.state == "cancelled"
    assert info.credited_total == "0.00"


def test_compensate_draft_sale_cancels(adapter, rpc):
    key = new_key()
    plan = adapter._plan(command(two_line_order(), key), write=True)
    sale_id = adapter._create_sale(plan)

    first = adapter.compensate({"reference": f"sale.sale:{sale_id}"})
    second = adapter.compensate({"reference": f"sale.sale:{sale_id}"})

    assert first["actions"] == ["cancelled_sale"]
    assert second["status"] == "already_compensated"
    (sale,) = rpc.model("sale.sale", "read", [sale_id], ["state"])
    assert sale["state"] == "cancelled"
    assert adapter.find_existing(key) is None


def test_compensate_posted_invoice_credits(adapter, rpc, tryton_server):
    posting = get_adapter(
        Destination(
            slug="tryton-post",
            adapter="tryton",
            settings={**adapter.settings, "post_invoices": True},
            credentials=adapter.destination.credentials,
        )
    )
    result = posting.execute(command(two_line_order()))
    posting.close()
    stored = {"reference": result.reference, **result.data}

    first = adapter.compensate(stored)
    second = adapter.compensate(stored)
    info = adapter.fetch_invoice(result.reference)

    assert result.data["invoice_states"] == ["posted"]
    assert result.data["invoice_numbers"][0]
    assert first["status"] == "compensated"
    assert first["actions"][0].startswith("credit_note:")
    assert second["status"] == "already_compensated"
    assert second["actions"] == []
    assert info.state == "cancelled"
    assert info.total == "914.91"
    assert info.credited_total == "914.91"
    assert (
        count(
            rpc,
            "account.invoice",
            [["type", "=", "out"], ["untaxed_amount", "=", Decimal("-914.91")]],
        )
        >= 1
    )


def test_fetch_invoice_returns_total(adapter):
    result = adapter.execute(command(two_line_order()))

    info = adapter.fetch_invoice(result.reference)

    assert info.reference == f"account.invoice:{result.data['invoice_ids'][0]}"
    assert info.state == "draft"
    assert info.currency == "EUR"
    assert info.total == "914.91"
    assert info.paid_on is None
    assert info.credited_total == "0.00"


def test_user_error_is_short_and_permanent(rpc):
    with pytest.raises(AdapterError) as caught:
        rpc.model(
            "party.party",
            "create",
            [{"name": "Duplicate", "code": "pipedrive:organization:201"}],
        )

    assert caught.value.reason_code == "erp_rejected"
    assert caught.value.transient is False
    assert caught.value.detail["tryton_error"] == "UserError"
    assert "unique" in caught.value.message.lower()
    assert len(caught.value.message) < 400


def test_execute_user_error_is_permanent(adapter, rpc):
    # The unit "Unit" has 0 decimals, so Tryton's create rejects 1.5 units.
    payload = order(line("FAKE-SKU-100", "1.5", "10.00", "15.00"))
    sales_before = count(rpc, "sale.sale")

    with pytest.raises(AdapterError) as caught:
        adapter.execute(command(payload))

    assert caught.value.reason_code == "erp_rejected"
    assert caught.value.transient is False
    assert caught.value.detail["tryton_error"] == "UserError"
    assert "1.5" in caught.value.message
    assert len(caught.value.message) < 400
    assert count(rpc, "sale.sale") == sales_before


def test_execute_resumes_unconfirmed_sale(adapter, rpc):
    key = new_key()
    plan = adapter._plan(command(two_line_order(), key), write=True)
    draft_id = adapter._create_sale(plan)
    assert adapter.find_existing(key) is None

    result = adapter.execute(command(two_line_order(), key))

    assert result.data["sale_id"] == draft_id
    assert result.data["sale_state"] == "processing"
    assert count(rpc, "sale.sale", [["reference", "=", key]]) == 1


def test_unknown_method_is_permanent(rpc):
    with pytest.raises(AdapterError) as caught:
        rpc.model("sale.sale", "no_such_method", [])

    assert caught.value.reason_code == "erp_rejected"
    assert caught.value.detail["status"] == 403
    assert caught.value.transient is False


def test_expired_session_renewed_once(tryton_server):
    client = TrytonRPC(
        tryton_server.url,
        tryton_server.database,
        tryton_server.login,
        tryton_server.password,
    )
    client.authenticate()
    client._authorization = "Session " + "YWRtaW46MTpleHBpcmVk"  # admin:1:expired

    assert client.model("sale.sale", "search_count", []) >= 0
    assert client._authorization != "Session YWRtaW46MTpleHBpcmVk"
    client.close()


def test_second_unauthorized_is_auth_failed(tryton_server, monkeypatch):
    client = TrytonRPC(
        tryton_server.url,
        tryton_server.database,
        tryton_server.login,
        tryton_server.password,
    )
    client.authenticate()
    context = client.context

    def stale_login():
        client._authorization = "Session YWRtaW46MTpleHBpcmVk"
        client.context = context

    monkeypatch.setattr(client, "authenticate", stale_login)
    stale_login()

    with pytest.raises(AdapterError) as caught:
        client.model("sale.sale", "search_count", [])

    assert caught.value.reason_code == "auth_failed"
    client.close()


@pytest.mark.parametrize(
    ("error", "reason", "transient"),
    [
        (["UserWarning", ["sale_big", "The sale is big.", ""]], "erp_rejected", False),
        (
            ["ConcurrencyException", "Records were modified in the meanwhile"],
            "erp_unavailable",
            True,
        ),
        (["database is locked", "Traceback …"], "erp_unavailable", True),
        (
            ["'NoneType' object has no attribute 'id'", "Traceback …"],
            "erp_rejected",
            False,
        ),
    ],
)
def test_error_classification(error, reason, transient):
    classified = tryton_error("model.sale.sale.confirm", error)

    assert classified.reason_code == reason
    assert classified.transient is transient
    assert "Traceback" not in classified.message


def test_user_error_drops_domain():
    domain = [[["code", "=", "x" * 100]]] * 300

    error = tryton_error(
        "model.sale.sale.create", ["UserError", ["Bad value.", "", domain]]
    )

    assert error.message == "Bad value."
    assert error.reason_code == "erp_rejected"
    assert error.transient is False


def test_server_killed_is_transient(tryton_server):
    destination = Destination(
        slug="tryton-outage",
        adapter="tryton",
        settings={
            "url": tryton_server.url,
            "database": tryton_server.database,
            "login": tryton_server.login,
            "timeout": 5,
        },
        credentials={"password": tryton_server.password},
    )
    adapter = get_adapter(destination)
    assert adapter.find_existing(new_key()) is None
    outcome = {}

    def call_execute():
        try:
            adapter.execute(command(two_line_order()))
        except AdapterError as exc:
            outcome["error"] = exc

    # The frozen server accepts the connection but never responds, so the call
    # is in flight when the process dies. A call that starts after the kill
    # fails the same way, with a refused connection.
    tryton_server.freeze()
    worker = threading.Thread(target=call_execute)
    try:
        worker.start()
        worker.join(0.5)
        tryton_server.kill()
        worker.join()
    finally:
        tryton_server.start()

    assert outcome["error"].reason_code == "erp_unavailable"
    assert outcome["error"].transient is True
    assert adapter.find_existing(new_key()) is None
    adapter.close()


def test_frozen_server_times_out(tryton_server):
    destination = Destination(
        slug="tryton-timeout",
        adapter="tryton",
        settings={
            "url": tryton_server.url,
            "database": tryton_server.database,
            "login": tryton_server.login,
            "timeout": 1,
        },
        credentials={"password": tryton_server.password},
    )
    adapter = get_adapter(destination)
    assert adapter.find_existing(new_key()) is None
    tryton_server.freeze()
    try:
        with pytest.raises(AdapterError) as caught:
            adapter.find_existing(new_key())
    finally:
        tryton_server.thaw()

    assert caught.value.reason_code == "erp_unavailable"
    assert caught.value.transient is True
    assert "did not answer" in caught.value.message
    adapter.close()


def test_wrong_password_is_auth_failed(tryton_server):
    destination = Destination(
        slug="tryton-bad",
        adapter="tryton",
        settings={
            "url": tryton_server.url,
            "database": tryton_server.database,
            "login": tryton_server.login,
        },
        credentials={"password": "not-the-password"},
    )
    adapter = get_adapter(destination)

    with pytest.raises(AdapterError) as caught:
        adapter.find_existing(new_key())

    assert caught.value.reason_code == "auth_failed"
    assert caught.value.transient is False
