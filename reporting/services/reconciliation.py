"""Reconciliation: every synced order of a window against its ERP invoice.

A run reads succeeded live commands in id order, in batches. Each batch
fetches the invoices through the destination's adapter, then stores the
items, the invoice snapshots, the exception cases and the new cursor in one
transaction. A run that crashed therefore resumes after its last committed
batch. After the orders, the run lists the ERP's documents of the window
and opens a case for each one that no command created.
"""

import logging
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from meshline import money
from reporting.models import ErpInvoiceSnapshot, ReconciliationItem, ReconciliationRun
from reporting.services.erp_documents import list_documents
from reporting.services.summary import store_snapshots
from syncflows.adapters import get_adapter
from syncflows.models import Command
from syncflows.services.failures import Failure

logger = logging.getLogger(__name__)
Outcome = ReconciliationItem.Outcome
CASE_REASONS = {
    Outcome.MISMATCHED: "reconciliation_mismatch",
    Outcome.MISSING: "invoice_missing",
    Outcome.ORPHAN: "orphan_document",
}


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


def _adapter(adapters, destination):
    if destination.pk not in adapters:
        adapters[destination.pk] = get_adapter(destination)
    return adapters[destination.pk]


def _next_batch(run, adapters) -> bool:
    batch = list(
        orders_in_window(run)
        .filter(pk__gt=run.cursor)
        .select_related("destination", "brief_version", "record__connector")
        .defer("result")
        .order_by("pk")[: settings.MESHLINE_RECONCILIATION_BATCH]
    )
    if not batch:
        return False
    checked = [
        _check_order(run, command, _adapter(adapters, command.destination))
        for command in batch
    ]
    _store_batch(run, batch[-1].pk, checked)
    return True


def _check_order(run, command, adapter) -> Checked:
    payload = command.payload
    currency = payload.get("currency", "")
    expected = money.to_decimal(payload.get("crm_amount") or payload.get("total"))
    item = ReconciliationItem(
        run=run,
        command=command,
        destination=command.destination,
        record_key=command.record.record_key,
        crm_amount=expected,
        crm_currency=currency,
        erp_reference=command.erp_reference,
        document_number=command.erp_document_number,
    )
    invoice = adapter.fetch_invoice(command.erp_reference)
    if invoice is None or invoice.state == "cancelled":
        item.outcome = Outcome.MISSING
        item.message = (
            f"{command.destination.name} has no valid invoice for "
            f"{command.erp_document_number or command.erp_reference}"
            + (f" (invoice {invoice.number} is cancelled)." if invoice else ".")
        )
        return Checked(item, None)
    item.erp_amount = Decimal(invoice.total)
    item.erp_currency = invoice.currency
    item.invoice_number = invoice.number
    if invoice.currency != currency or item.erp_amount != expected:
        item.outcome = Outcome.MISMATCHED
        item.message = (
            f"The CRM deal is {expected} {currency}, but invoice {invoice.number} "
            f"is {invoice.total} {invoice.currency}."
        )
    else:
        item.outcome = Outcome.MATCHED
    return Checked(item, _snapshot(command, invoice))


def _snapshot(command, invoice) -> ErpInvoiceSnapshot:
    payload = command.payload
    close_date = payload.get("close_date")
    return ErpInvoiceSnapshot(
        command=command,
        destination_id=command.destination_id,
        brief_id=command.brief_version.brief_id,
        business_unit=command.record.business_unit
        or command.record.connector.business_unit,
        synced_at=command.finished_at,
        crm_close_date=date.fromisoformat(close_date[:10]) if close_date else None,
        crm_amount=money.to_decimal(payload.get("crm_amount") or payload.get("total")),
        crm_currency=payload.get("currency", ""),
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
    with transaction.atomic():
        for entry in checked:
            counts[entry.item.outcome] += 1
            if entry.item.outcome in CASE_REASONS:
                entry.item.case_id = _open_case(entry.item)
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


def _open_case(item) -> int | None:
    """Open a case for an item, unless an open case already covers it."""
    from exceptions.models import ExceptionCase
    from exceptions.services.cases import open_case_for_failure

    reason = CASE_REASONS[item.outcome]
    existing = ExceptionCase.objects.filter(
        reason_code=reason,
        record_key=item.record_key,
        state__in=ExceptionCase.OPEN_STATES,
    ).values_list("pk", flat=True)
    if item.command_id:
        existing = existing.filter(command_id=item.command_id)
    found = existing.first()
    if found is not None:
        return found
    command = item.command
    case = open_case_for_failure(
        Failure(
            reason_code=reason,
            message=item.message,
            record_key=item.record_key,
            detail=_case_detail(item),
            command=command,
            brief=command.brief_version.brief if command else None,
            destination=item.destination,
            business_unit=(command.record.business_unit if command else ""),
        )
    )
    return case.pk


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
        adapter = _adapter(adapters, destination)
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
        for item in items:
            item.case_id = _open_case(item)
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
