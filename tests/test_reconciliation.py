"""Reconciliation against the sandbox and against a real trytond server."""

import datetime
import secrets
from decimal import Decimal

import pytest
from django.utils import timezone

from exceptions.models import ExceptionCase
from reporting.models import ErpInvoiceSnapshot, ReconciliationRun
from reporting.services import reconciliation
from reporting.services.reconciliation import execute_run, start_run
from syncflows.adapters import CommandData, get_adapter
from syncflows.models import (
    Brief,
    BriefVersion,
    Command,
    Connector,
    Destination,
    SandboxCurrency,
    SandboxCustomer,
    SandboxOrder,
    SandboxProduct,
    SourceRecord,
)

pytest_plugins = ["tests.tryton_plugin"]
RECONCILIATION_REASONS = [
    "invoice_missing",
    "orphan_document",
    "reconciliation_mismatch",
]


class Orders:
    """Commands that succeeded against a destination, built without the pipeline."""

    def __init__(self, destination):
        self.destination = destination
        self.connector = Connector.objects.create(
            slug="crm", name="CRM", kind="generic", business_unit="emea"
        )
        brief = Brief.objects.create(
            slug="won", name="Won deals", intent="x", keywords=["discounts"]
        )
        self.version = BriefVersion.objects.create(
            brief=brief, number=1, state="active", mapping={}, command_schema={}
        )
        self.count = 0

    def command(self, payload, result, key):
        self.count += 1
        record = SourceRecord.objects.create(
            connector=self.connector,
            object_type="deal",
            record_id=str(self.count),
            record_key=f"crm:deal:{self.count}",
        )
        return Command.objects.create(
            idempotency_key=key,
            command_type="sales_order.create",
            brief_version=self.version,
            record=record,
            destination=self.destination,
            payload=payload,
            payload_hash="x",
            ordering_key=record.record_key,
            state="succeeded",
            next_attempt_at=timezone.now(),
            finished_at=timezone.now(),
            erp_reference=result.reference,
            erp_document_number=result.document_number,
            result={"reference": result.reference},
        )


def order_payload(amount, currency="EUR", close_date="2031-03-15"):
    return {
        "crm_reference": "crm:deal:x",
        "customer": {
            "reference": "hubspot:company:800000001",
            "name": "Yllä Esimerkki Oy",
        },
        "currency": currency,
        "close_date": close_date,
        "crm_amount": amount,
        "lines": [
            {
                "sku": "FAKE-SKU-100",
                "quantity": "1",
                "unit_price": amount,
                "line_total": amount,
            }
        ],
        "total": amount,
    }


def reconcile(since):
    run = start_run(since, timezone.now() + datetime.timedelta(seconds=1))
    return execute_run(run.pk)


def cases():
    return ExceptionCase.objects.filter(reason_code__in=RECONCILIATION_REASONS)


# Sandbox.


@pytest.fixture
def sandbox(db):
    destination = Destination.objects.create(
        slug="sandbox", name="Sandbox ERP", adapter="sandbox"
    )
    SandboxCurrency.objects.create(destination=destination, code="EUR")
    SandboxProduct.objects.create(
        destination=destination, code="FAKE-SKU-100", name="p"
    )
    SandboxCustomer.objects.create(
        destination=destination, reference="hubspot:company:800000001", name="c"
    )
    return destination


def sandbox_order(orders, adapter, amount):
    key = secrets.token_hex(16)
    payload = order_payload(amount)
    result = adapter.execute(CommandData(key, "sales_order.create", payload))
    return orders.command(payload, result, key)


@pytest.mark.django_db
def test_sandbox_run_finds_each_outcome(sandbox, settings):
    settings.MESHLINE_RECONCILIATION_BATCH = 2
    since = timezone.now() - datetime.timedelta(seconds=1)
    adapter = get_adapter(sandbox)
    orders = Orders(sandbox)
    matched = [sandbox_order(orders, adapter, "100.00") for _ in range(3)]
    changed = sandbox_order(orders, adapter, "250.00")
    SandboxOrder.objects.filter(pk=int(changed.erp_reference.split(":")[1])).update(
        invoice_total=Decimal("249.00"), paid_on=datetime.date(2031, 3, 25)
    )
    cancelled = sandbox_order(orders, adapter, "80.00")
    SandboxOrder.objects.filter(pk=int(cancelled.erp_reference.split(":")[1])).update(
        state="cancelled"
    )
    adapter.execute(
        CommandData(secrets.token_hex(16), "sales_order.create", order_payload("5.00"))
    )

    run = reconcile(since)

    assert run.state == "done"
    assert (run.total, run.processed) == (5, 5)
    assert (run.matched, run.mismatched, run.missing, run.orphaned) == (3, 1, 1, 1)
    assert (
        sorted(cases().values_list("reason_code", flat=True)) == RECONCILIATION_REASONS
    )
    snapshot = ErpInvoiceSnapshot.objects.get(command=changed)
    assert snapshot.invoice_total == Decimal("249.00")
    assert snapshot.paid_on == datetime.date(2031, 3, 25)
    assert snapshot.crm_close_date == datetime.date(2031, 3, 15)
    assert ErpInvoiceSnapshot.objects.filter(command__in=matched).count() == 3
    totals = {(r["outcome"], r["crm_currency"]): r for r in reconciliation.totals(run)}
    assert totals[("matched", "EUR")]["crm"] == Decimal("300.000")

    again = reconcile(since)
    assert (again.mismatched, again.missing, again.orphaned) == (1, 1, 1)
    assert cases().count() == 3


@pytest.mark.django_db
def test_run_resumes_after_crash(sandbox, settings, monkeypatch):
    settings.MESHLINE_RECONCILIATION_BATCH = 2
    since = timezone.now() - datetime.timedelta(seconds=1)
    adapter = get_adapter(sandbox)
    orders = Orders(sandbox)
    for amount in ("10.00", "20.00", "30.00", "40.00", "50.00"):
        sandbox_order(orders, adapter, amount)
    SandboxOrder.objects.filter(total=Decimal("40.00")).update(
        invoice_total=Decimal("41.00")
    )
    run = start_run(since, timezone.now() + datetime.timedelta(seconds=1))
    real_check = reconciliation._check_order
    calls = []

    def crash_on_fifth(run, command, adapter):
        calls.append(command.pk)
        if len(calls) == 5:
            raise ConnectionError("ERP went away")
        return real_check(run, command, adapter)

    monkeypatch.setattr(reconciliation, "_check_order", crash_on_fifth)
    with pytest.raises(ConnectionError):
        execute_run(run.pk)
    run.refresh_from_db()
    assert run.state == "failed"
    assert run.processed == 4
    assert run.mismatched == 1

    monkeypatch.setattr(reconciliation, "_check_order", real_check)
    run = execute_run(run.pk)

    assert run.state == "done"
    assert (run.processed, run.matched, run.mismatched) == (5, 4, 1)
    assert run.items.count() == 5
    assert cases().count() == 1


# Tryton.


@pytest.fixture
def tryton(db, tryton_server):
    return Destination.objects.create(
        slug="tryton",
        name="Tryton",
        adapter="tryton",
        settings={
            "url": tryton_server.url,
            "database": tryton_server.database,
            "login": tryton_server.login,
            "timeout": 20,
        },
        credentials={"password": tryton_server.password},
    )


def tryton_order(orders, adapter, amount, *, record=True):
    key = secrets.token_hex(32)
    payload = order_payload(amount)
    result = adapter.execute(CommandData(key, "sales_order.create", payload))
    return orders.command(payload, result, key) if record else result


def invoice_of(adapter, command):
    (sale,) = adapter.rpc.model(
        "sale.sale", "read", [int(command.erp_reference.split(":")[1])], ["invoices"]
    )
    return sale["invoices"][0]


@pytest.mark.tryton
@pytest.mark.django_db
def test_tryton_run_finds_exactly_three(tryton):
    """A changed invoice, a cancelled invoice and an ERP-only sale."""
    # Tryton stores second-precision naive UTC create dates.
    since = timezone.now().replace(microsecond=0) - datetime.timedelta(seconds=1)
    adapter = get_adapter(tryton)
    orders = Orders(tryton)
    tryton_order(orders, adapter, "100.00")
    changed = tryton_order(orders, adapter, "200.00")
    cancelled = tryton_order(orders, adapter, "300.00")
    tryton_order(orders, adapter, "50.00", record=False)

    (line_id,) = adapter.rpc.model(
        "account.invoice", "read", [invoice_of(adapter, changed)], ["lines"]
    )[0]["lines"]
    adapter.rpc.model(
        "account.invoice.line", "write", [line_id], {"unit_price": Decimal("190.00")}
    )
    # Tryton 8.2 recreates a deleted draft invoice of a processing sale at
    # once, so the invoice is cancelled instead: the sale keeps no valid one.
    adapter.rpc.model("account.invoice", "cancel", [invoice_of(adapter, cancelled)])
    assert adapter.fetch_invoice(cancelled.erp_reference).state == "cancelled"

    run = reconcile(since)
    adapter.close()

    assert run.state == "done"
    assert (run.matched, run.mismatched, run.missing, run.orphaned) == (1, 1, 1, 1)
    assert (
        sorted(cases().values_list("reason_code", flat=True)) == RECONCILIATION_REASONS
    )
    mismatch = cases().get(reason_code="reconciliation_mismatch")
    assert mismatch.command == changed
    assert mismatch.detail["expected"] == "200.00"
    assert mismatch.detail["actual"] == "190.00"
    assert cases().get(reason_code="invoice_missing").command == cancelled
    assert ReconciliationRun.objects.get().items.filter(outcome="orphan").count() == 1


# Many orders.


def bulk_orders(orders, destination, count):
    """Create ``count`` succeeded commands and their sandbox orders in bulk."""
    customer = SandboxCustomer.objects.get(destination=destination)
    records = SourceRecord.objects.bulk_create(
        SourceRecord(
            connector=orders.connector,
            object_type="deal",
            record_id=f"bulk-{index}",
            record_key=f"crm:deal:bulk-{index}",
        )
        for index in range(count)
    )
    now = timezone.now()
    amounts = [f"{100 + index % 900}.{index % 100:02d}" for index in range(count)]
    commands = Command.objects.bulk_create(
        Command(
            idempotency_key=f"bulk-{index}",
            command_type="sales_order.create",
            brief_version=orders.version,
            record=record,
            destination=destination,
            payload=order_payload(amount),
            payload_hash="x",
            ordering_key=record.record_key,
            state="succeeded",
            next_attempt_at=now,
            finished_at=now,
        )
        for index, (record, amount) in enumerate(zip(records, amounts, strict=True))
    )
    sandbox_orders = SandboxOrder.objects.bulk_create(
        SandboxOrder(
            destination=destination,
            number=f"SO-BULK-{index}",
            idempotency_key=f"bulk-{index}",
            customer=customer,
            currency="EUR",
            total=Decimal(amount),
            lines=[],
            invoice_number=f"INV-BULK-{index}",
            invoice_total=Decimal(amount),
        )
        for index, amount in enumerate(amounts)
    )
    for command, order in zip(commands, sandbox_orders, strict=True):
        command.erp_reference = f"sandbox.order:{order.pk}"
        command.erp_document_number = order.number
    Command.objects.bulk_update(commands, ["erp_reference", "erp_document_number"])
    return commands, sandbox_orders


@pytest.mark.django_db
def test_thousands_of_orders_find_planted(
    sandbox, settings, django_assert_max_num_queries
):
    settings.MESHLINE_RECONCILIATION_BATCH = 500
    since = timezone.now() - datetime.timedelta(seconds=1)
    orders = Orders(sandbox)
    commands, sandbox_orders = bulk_orders(orders, sandbox, 3000)
    changed = sandbox_orders[7::100]
    for order in changed:
        order.invoice_total += Decimal("0.01")
    SandboxOrder.objects.bulk_update(changed, ["invoice_total"])
    other_currency = sandbox_orders[23::300]
    SandboxOrder.objects.filter(pk__in=[o.pk for o in other_currency]).update(
        currency="USD"
    )
    cancelled = sandbox_orders[41::500]
    SandboxOrder.objects.filter(pk__in=[o.pk for o in cancelled]).update(
        state="cancelled"
    )
    uninvoiced = sandbox_orders[59::750]
    SandboxOrder.objects.filter(pk__in=[o.pk for o in uninvoiced]).update(
        invoice_number=""
    )
    adapter = get_adapter(sandbox)
    erp_only = [
        adapter.execute(
            CommandData(secrets.token_hex(16), "sales_order.create", order_payload(a))
        ).reference
        for a in ("5.00", "6.00")
    ]
    mismatched = changed + other_currency
    missing = cancelled + uninvoiced
    planted = len(mismatched) + len(missing) + len(erp_only)
    batches = 3000 // 500 + 1

    # The queries grow with the batches and the cases, never with the orders.
    # Measured: 756 for 7 batches and 52 cases, about a dozen for each case.
    with django_assert_max_num_queries(30 * batches + 15 * planted + 50):
        run = reconcile(since)

    def commands_of(planted):
        references = {f"sandbox.order:{order.pk}" for order in planted}
        return {c.pk for c in commands if c.erp_reference in references}

    items = run.items.all()
    assert run.state == "done"
    assert (run.total, run.processed) == (3000, 3000)
    assert (len(mismatched), len(missing)) == (40, 10)
    assert run.mismatched == 40
    assert run.missing == 10
    assert run.matched == 2950
    assert run.orphaned == 2
    assert {i.command_id for i in items.filter(outcome="mismatched")} == commands_of(
        mismatched
    )
    assert {i.command_id for i in items.filter(outcome="missing")} == commands_of(
        missing
    )
    assert sorted(
        items.filter(outcome="orphan").values_list("erp_reference", flat=True)
    ) == sorted(erp_only)
    assert cases().count() == 52
    assert ErpInvoiceSnapshot.objects.count() == 2990
    usd = items.get(command_id=min(commands_of(other_currency)))
    assert (usd.crm_currency, usd.erp_currency) == ("EUR", "USD")
