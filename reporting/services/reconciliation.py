"""Reconciliation: every synced order of a window against its ERP invoice.

A run reads the succeeded live commands of the window in id order, in
batches, as plain values rather than model rows. Each batch fetches the
invoices of all its orders with one ``fetch_invoices`` call per destination,
compares each order with its invoice, and stores the items, the invoice
snapshots, the exception cases and the new cursor in one transaction. So
memory stays flat, and a run that crashed resumes after its last committed
batch. After the orders, the run lists the ERP's documents of the window
and opens a case for each one that no command created.
"""

import logging
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import CharField, F, TextField, Value
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce, NullIf
from django.utils import timezone

from meshline import money
from reporting.models import ErpInvoiceSnapshot, ReconciliationItem, ReconciliationRun
from reporting.services.erp_documents import list_documents
from reporting.services.summary import store_snapshots
from syncflows.adapters import get_adapter
from syncflows.models import Command, Destination
from syncflows.services.failures import Failure

logger = logging.getLogger(__name__)
Outcome = ReconciliationItem.Outcome
CASE_REASONS = {
    Outcome.MISMATCHED: "reconciliation_mismatch",
    Outcome.MISSING: "invoice_missing",
    Outcome.ORPHAN: "orphan_document",
}


@dataclass
class Order:
    """A synced order as reconciliation reads it: the command's values only."""

    pk: int
    destination_id: int
    brief_id: int
    record_key: str
    business_unit: str  # the record's, else its connector's
    currency: str
    amount: str | None  # the payload's crm_amount, else its total
    close_date: str | None
    erp_reference: str
    document_number: str
    finished_at: datetime
    destination: Destination | None = None


@dataclass
class Checked:
    item: ReconciliationItem
    snapshot: ErpInvoiceSnapshot | None


def start_run(window_start, window_end, *, acting_user=None, destination=None):
    """Create a queued run and count the orders it will check."""
    run = ReconciliationRun.objects.create(
        window_start=window_start,
        window_end=window_end,
        destination=destination,
        requested_by=acting_user,
    )
    run.total = orders_in_window(run).count()
    run.save(update_fields=["total"])
    logger.info("Reconciliation run %s queued for %s orders", run.pk, run.total)
    return run


def orders_in_window(run):
    orders = Command.objects.filter(
        state=Command.State.SUCCEEDED,
        mode=Command.Mode.LIVE,
        finished_at__gte=run.window_start,
        finished_at__lt=run.window_end,
    ).exclude(erp_reference="")
    if run.destination_id:
        orders = orders.filter(destination_id=run.destination_id)
    return orders


def execute_run(run_id: int) -> ReconciliationRun:
    """Run (or resume) a reconciliation run to its end."""
    run = ReconciliationRun.objects.get(pk=run_id)
    if run.state == ReconciliationRun.State.DONE:
        return run
    now = timezone.now()
    ReconciliationRun.objects.filter(pk=run.pk).update(
        state=ReconciliationRun.State.RUNNING,
        started_at=run.started_at or now,
        error="",
    )
    adapters = {}
    try:
        while _next_batch(run, adapters):
            pass
        if not run.orphans_checked:
            _check_orphans(run, adapters)
    except Exception as exc:
        ReconciliationRun.objects.filter(pk=run.pk).update(
            state=ReconciliationRun.State.FAILED, error=str(exc)[:2000]
        )
        logger.exception(
            "Reconciliation run %s failed at command %s", run.pk, run.cursor
        )
        raise
    finally:
        for adapter in adapters.values():
            adapter.close()
    ReconciliationRun.objects.filter(pk=run.pk).update(
        state=ReconciliationRun.State.DONE, finished_at=timezone.now()
    )
    run.refresh_from_db()
    logger.info(
        "Reconciliation run %s done: %s matched, %s mismatched, %s missing, %s orphans",
        run.pk,
        run.matched,
        run.mismatched,
        run.missing,
        run.orphaned,
    )
    return run


def _adapter(adapters, destination_id: int):
    """Return the adapter of a destination, created once per run."""
    if destination_id not in adapters:
        destination = Destination.objects.get(pk=destination_id)
        adapters[destination_id] = get_adapter(destination)
    return adapters[destination_id]


def _next_batch(run, adapters) -> bool:
    orders = _orders(run, settings.MESHLINE_RECONCILIATION_BATCH)
    if not orders:
        return False
    invoices = {}
    for destination_id in sorted({order.destination_id for order in orders}):
        adapter = _adapter(adapters, destination_id)
        group = [o for o in orders if o.destination_id == destination_id]
        for order in group:
            order.destination = adapter.destination
        references = [order.erp_reference for order in group]
        invoices[destination_id] = adapter.fetch_invoices(references)
    checked = [
        _check_order(run, order, invoices[order.destination_id][order.erp_reference])
        for order in orders
    ]
    _store_batch(run, orders[-1].pk, checked)
    return True


def _orders(run, limit: int) -> list[Order]:
    """Return the next orders after the run's cursor, in id order."""
    unit = Coalesce(
        NullIf("record__business_unit", Value("")),
        "record__connector__business_unit",
        output_field=CharField(),
    )
    rows = (
        orders_in_window(run)
        .filter(pk__gt=run.cursor)
        .order_by("pk")
        .annotate(
            order_unit=unit,
            order_currency=KT("payload__currency"),
            order_amount=Coalesce(
                NullIf(KT("payload__crm_amount"), Value("")),
                KT("payload__total"),
                output_field=TextField(),
            ),
            order_close_date=KT("payload__close_date"),
        )
        .values_list(
            "pk",
            "destination_id",
            "brief_version__brief_id",
            "record__record_key",
            "order_unit",
            "order_currency",
            "order_amount",
            "order_close_date",
            "erp_reference",
            "erp_document_number",
            "finished_at",
        )[:limit]
    )
    orders = []
    for row in rows:
        order = Order(*row)
        order.business_unit = order.business_unit or ""
        order.currency = order.currency or ""
        orders.append(order)
    return orders


def _check_order(run, order: Order, invoice) -> Checked:
    expected = money.to_decimal(order.amount)
    item = ReconciliationItem(
        run=run,
        command_id=order.pk,
        destination=order.destination,
        record_key=order.record_key,
        crm_amount=expected,
        crm_currency=order.currency,
        erp_reference=order.erp_reference,
        document_number=order.document_number,
    )
    if invoice is None or invoice.state == "cancelled":
        item.outcome = Outcome.MISSING
        item.message = (
            f"{order.destination.name} has no valid invoice for "
            f"{order.document_number or order.erp_reference}"
            + (f" (invoice {invoice.number} is cancelled)." if invoice else ".")
        )
        return Checked(item, None)
    item.erp_amount = Decimal(invoice.total)
    item.erp_currency = invoice.currency
    item.invoice_number = invoice.number
    if invoice.currency != order.currency or item.erp_amount != expected:
        item.outcome = Outcome.MISMATCHED
        item.message = (
            f"The CRM deal is {expected} {order.currency}, but invoice "
            f"{invoice.number} is {invoice.total} {invoice.currency}."
        )
    else:
        item.outcome = Outcome.MATCHED
    return Checked(item, _snapshot(order, expected, invoice))


def _snapshot(order: Order, expected: Decimal, invoice) -> ErpInvoiceSnapshot:
    close_date = order.close_date
    return ErpInvoiceSnapshot(
        command_id=order.pk,
        destination_id=order.destination_id,
        brief_id=order.brief_id,
        business_unit=order.business_unit,
        synced_at=order.finished_at,
        crm_close_date=date.fromisoformat(close_date[:10]) if close_date else None,
        crm_amount=expected,
        crm_currency=order.currency,
        invoice_reference=invoice.reference,
        invoice_number=invoice.number,
        invoice_state=invoice.state,
        invoice_currency=invoice.currency,
        invoice_total=Decimal(invoice.total),
        credited_total=Decimal(invoice.credited_total or "0"),
        paid_on=date.fromisoformat(invoice.paid_on) if invoice.paid_on else None,
        fetched_at=timezone.now(),
    )


def _store_batch(run, cursor: int, checked: list[Checked]) -> None:
    counts = {outcome: 0 for outcome in Outcome.values}
    for entry in checked:
        counts[entry.item.outcome] += 1
    with transaction.atomic():
        _open_cases([e.item for e in checked if e.item.outcome in CASE_REASONS])
        ReconciliationItem.objects.bulk_create([entry.item for entry in checked])
        store_snapshots(
            [entry.snapshot for entry in checked if entry.snapshot is not None]
        )
        ReconciliationRun.objects.filter(pk=run.pk).update(
            cursor=cursor,
            processed=F("processed") + len(checked),
            matched=F("matched") + counts[Outcome.MATCHED],
            mismatched=F("mismatched") + counts[Outcome.MISMATCHED],
            missing=F("missing") + counts[Outcome.MISSING],
            heartbeat_at=timezone.now(),
        )
    run.cursor = cursor


def _open_cases(items) -> None:
    """Set ``case_id`` of each item to an open case that covers it, or a new one."""
    from exceptions.models import ExceptionCase
    from exceptions.services.cases import open_case_for_failure

    if not items:
        return
    commands = Command.objects.select_related(
        "brief_version__brief", "record", "destination"
    ).in_bulk([item.command_id for item in items if item.command_id])
    existing = ExceptionCase.objects.filter(
        reason_code__in={CASE_REASONS[item.outcome] for item in items},
        record_key__in={item.record_key for item in items},
        state__in=ExceptionCase.OPEN_STATES,
    ).values_list("pk", "reason_code", "record_key", "command_id")
    # The cases come in the model's order, so the first one of a key wins.
    found = {}
    for pk, reason, record_key, command_id in existing:
        found.setdefault((reason, record_key, command_id), pk)
        found.setdefault((reason, record_key, None), pk)
    for item in items:
        key = (CASE_REASONS[item.outcome], item.record_key, item.command_id)
        if key not in found:
            item.command = commands.get(item.command_id)
            found[key] = open_case_for_failure(_failure(item)).pk
        item.case_id = found[key]


def _failure(item) -> Failure:
    command = item.command
    return Failure(
        reason_code=CASE_REASONS[item.outcome],
        message=item.message,
        record_key=item.record_key,
        detail=_case_detail(item),
        command=command,
        brief=command.brief_version.brief if command else None,
        destination=item.destination,
        business_unit=(command.record.business_unit if command else ""),
    )


def _case_detail(item) -> dict:
    return {
        "reconciliation_run": item.run_id,
        "erp_reference": item.erp_reference,
        "invoice_number": item.invoice_number,
        "expected": None if item.crm_amount is None else str(item.crm_amount),
        "expected_currency": item.crm_currency,
        "actual": None if item.erp_amount is None else str(item.erp_amount),
        "actual_currency": item.erp_currency,
    }


def _destinations(run):
    """Return the destinations to list ERP documents of.

    NOTE: only destinations with synced orders in the window (or the run's own
    destination) are listed, so an ERP that Meshline sent nothing to in the
    window is not searched for orphan documents.
    """
    from syncflows.models import Destination

    if run.destination_id:
        return [run.destination]
    ids = orders_in_window(run).order_by().values("destination_id").distinct()
    return list(Destination.objects.filter(pk__in=ids, is_active=True).order_by("pk"))


def _check_orphans(run, adapters) -> None:
    for destination in _destinations(run):
        adapter = _adapter(adapters, destination.pk)
        for page in list_documents(adapter, run.window_start, run.window_end):
            _store_orphans(run, destination, page)
    ReconciliationRun.objects.filter(pk=run.pk).update(orphans_checked=True)
    run.orphans_checked = True


def _store_orphans(run, destination, page) -> None:
    references = [reference for reference, *_rest in page]
    known = set(
        Command.objects.filter(
            destination=destination, erp_reference__in=references
        ).values_list("erp_reference", flat=True)
    )
    done = set(
        ReconciliationItem.objects.filter(
            run=run, outcome=Outcome.ORPHAN, erp_reference__in=references
        ).values_list("erp_reference", flat=True)
    )
    items = []
    for reference, number, currency, total in page:
        if reference in known or reference in done:
            continue
        item = ReconciliationItem(
            run=run,
            outcome=Outcome.ORPHAN,
            destination=destination,
            record_key=f"erp:{destination.slug}:{reference}",
            erp_reference=reference,
            document_number=number,
            erp_amount=total,
            erp_currency=currency,
            message=(
                f"{destination.name} holds {number or reference} ({total} {currency}), "
                "which no Meshline command created."
            ),
        )
        items.append(item)
    if not items:
        return
    with transaction.atomic():
        _open_cases(items)
        ReconciliationItem.objects.bulk_create(items)
        ReconciliationRun.objects.filter(pk=run.pk).update(
            orphaned=F("orphaned") + len(items)
        )


def totals(run) -> list[dict]:
    """Sum the CRM and ERP amounts of a run per outcome and currency, in SQL."""
    from django.db.models import Count, Sum

    rows = (
        run.items.order_by()
        .values("outcome", "crm_currency", "erp_currency")
        .annotate(n=Count("id"), crm=Sum("crm_amount"), erp=Sum("erp_amount"))
        .order_by("outcome", "crm_currency", "erp_currency")
    )
    return [
        {
            **row,
            "crm": _at_minor_unit(row["crm"], row["crm_currency"]),
            "erp": _at_minor_unit(row["erp"], row["erp_currency"]),
        }
        for row in rows
    ]


def _at_minor_unit(amount, currency):
    if amount is None or not currency:
        return amount
    try:
        return money.quantize(amount, currency)
    except money.MoneyError:
        return amount
