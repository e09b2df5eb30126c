"""The KPI summary: the ledger folded into sums per time slot.

The success rate, the exception rate and expected revenue would otherwise
aggregate every sync run and command of the dashboard's range, with
subqueries on the cases and the ledger for each run. Instead, each counted
run and command has a fact row (``SyncFact``, ``CommandFact``), and the
facts are summed per 15-minute UTC slot and segment (``SyncSummary``,
``RevenueSummary``). The dashboard sums the slots of its range. A 15-minute
slot keeps the day, week and month buckets exact in every time zone whose
UTC offset is a multiple of 15 minutes. ``covers`` checks that for the
requested range. Where it fails, the dashboard reads the runs and commands
directly.

A fold reads the ledger rows written since the watermark and recomputes the
facts of the runs and commands that those rows name, directly, through an
exception case or through the record. Then it adds the difference between
the old and the new facts to the sums. The fold relies on every change that
a KPI sees writing a ledger row in the same transaction or a later one: a
new run or command, a command that succeeds, is superseded or is
compensated, a case opened, a person's action. The dashboard folds before
it reads, and a schedule folds every minute, so a page load has little left
to do.

Days to cash, invoice accuracy and revenue invoiced read the invoice
snapshots, which only reconciliation writes. ``store_snapshots`` writes them
and adds the difference to their sums (``InvoiceSummary``, ``CashSummary``)
in the same transaction.

After a migration on a database with runs, and when a fold finds sums that
disagree with the facts, the summary waits for ``manage.py
rebuild_kpi_summary``, and the dashboard computes the KPIs live until then.

NOTE: a change that writes no ledger row (an edit in the admin or in SQL,
or the read-back retry that supersedes a failed run when a later run has
succeeded) shows only after a rebuild.
"""

import datetime
import logging
import time
from collections import defaultdict
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import BooleanField, ExpressionWrapper, Max, Q

from exceptions.models import ExceptionCase
from reporting.models import (
    CashSummary,
    CommandFact,
    ErpInvoiceSnapshot,
    InvoiceSummary,
    RevenueSummary,
    SummaryWatermark,
    SyncFact,
    SyncSummary,
)
from reporting.services.kpi_sources import CLEAN_RUN, counted_commands, counted_runs
from syncflows.models import Command, LedgerEntry, SourceRecord, SyncRun

logger = logging.getLogger(__name__)

SLOT_MINUTES = 15
# Runs or commands recomputed per query.
CHUNK = 2000
# Unconfirmed [max_id, xmax] pairs kept; see _advance.
MAX_PENDING = 16

SYNC_KEY = ("slot", "brief_id", "connector_id", "business_unit", "destination_id")
SYNC_SUMS = ("syncs", "clean", "excepted")
REVENUE_KEY = (*SYNC_KEY, "currency")
REVENUE_SUMS = ("commands", "amount")
INVOICE_KEY = ("slot", "brief_id", "business_unit", "destination_id", "currency")
INVOICE_SUMS = ("invoices", "accurate", "billed", "billed_amount")
CASH_KEY = ("paid_on", "brief_id", "business_unit", "destination_id")
CASH_SUMS = ("paid", "cash_days")
BILLED_STATES = ("posted", "paid")
# The fields that reconciliation writes when it stores a snapshot again.
SNAPSHOT_FIELDS = [
    "destination",
    "brief",
    "business_unit",
    "synced_at",
    "crm_close_date",
    "crm_amount",
    "crm_currency",
    "invoice_reference",
    "invoice_number",
    "invoice_state",
    "invoice_currency",
    "invoice_total",
    "credited_total",
    "paid_on",
    "fetched_at",
]


SUMMARY_MODELS = (
    SyncFact,
    CommandFact,
    SyncSummary,
    RevenueSummary,
    InvoiceSummary,
    CashSummary,
)


class SummaryDrift(Exception):
    """The stored sums disagree with the stored facts."""


def slot_of(moment: datetime.datetime) -> datetime.datetime:
    """Return the start of the UTC slot that contains ``moment``."""
    moment = moment.astimezone(datetime.UTC)
    minute = moment.minute - moment.minute % SLOT_MINUTES
    return moment.replace(minute=minute, second=0, microsecond=0)


def covers(filters) -> bool:
    """Return whether every bucket boundary of ``filters`` starts a slot.

    The boundaries are local midnights (day, week and month buckets all
    start at one) and the pilot date's midnight.
    """
    moments = [filters.end_at()]
    if filters.pilot is not None:
        moments.append(filters.pilot_at())
    day = filters.start
    while day <= filters.end:
        moments.append(datetime.datetime.combine(day, datetime.time(), filters.tz))
        day += datetime.timedelta(days=1)
    return all(slot_of(moment) == moment for moment in moments)


def fold(*, wait: bool = True, max_rows: int | None = None) -> int | None:
    """Fold the ledger rows written since the last fold into the summary.

    Return the number of runs and commands whose facts were recomputed, or
    None when the summary is not current afterwards. That happens when
    another fold holds the lock and ``wait`` is false, when more than
    ``max_rows`` ledger rows are waiting, and when the summary needs a
    rebuild. Folds run one at a time: each locks the watermark row.
    """
    with transaction.atomic():
        watermark = _locked_watermark(wait=wait)
        if watermark is None or watermark.rebuild:
            return None
        xmin, max_id = _snapshot_bounds()
        waiting = max_id - watermark.ledger_id
        if max_rows is not None and waiting > max_rows:
            return None
        ledger_id, pending = _advance(watermark, xmin, max_id)
        count = 0
        if waiting > 0:
            try:
                count = _fold_rows(watermark.ledger_id, max_id)
            except SummaryDrift as exc:
                _report_drift(exc)
                return None
        _save(watermark, ledger_id, pending, xmin, max_id)
    logger.debug("KPI summary folded up to ledger row %s: %s facts", max_id, count)
    return count


def rebuild() -> int:
    """Recompute every fact and sum from the runs, commands and snapshots.

    Return the number of runs and commands read. The rebuild holds the
    summary's lock while it runs, so the dashboard computes the KPIs live
    meanwhile. It can take minutes, longer than a django-q task may run, so
    ``manage.py rebuild_kpi_summary`` runs it.
    """
    _remember_position()
    with transaction.atomic():
        watermark = _locked_watermark()
        xmin, max_id = _snapshot_bounds()
        ledger_id, pending = _advance(watermark, xmin, max_id)
        count = _rebuild()
        _save(watermark, ledger_id, pending, xmin, max_id, rebuild=False)
    return count


def needs_rebuild() -> bool:
    return SummaryWatermark.objects.filter(rebuild=True).exists()


def _report_drift(exc: SummaryDrift) -> None:
    logger.error(
        "The KPI summary disagrees with its facts (%s). Run manage.py "
        "rebuild_kpi_summary; until then the dashboard computes the KPIs live.",
        exc,
    )
    SummaryWatermark.objects.update(rebuild=True)


def store_snapshots(snapshots: list[ErpInvoiceSnapshot]) -> None:
    """Insert or update invoice snapshots, one per command, and their sums.

    Reconciliation calls this inside the transaction of each batch.
    """
    if not snapshots:
        return
    with transaction.atomic():
        _locked_watermark()
        old = ErpInvoiceSnapshot.objects.filter(
            command_id__in=[snapshot.command_id for snapshot in snapshots]
        )
        old = {snapshot.command_id: snapshot for snapshot in old}
        ErpInvoiceSnapshot.objects.bulk_create(
            snapshots,
            update_conflicts=True,
            unique_fields=["command"],
            update_fields=SNAPSHOT_FIELDS,
        )
        new = {snapshot.command_id: snapshot for snapshot in snapshots}
        try:
            _apply_snapshots(old, new)
        except SummaryDrift as exc:
            _report_drift(exc)


# The watermark.
#
# Ledger ids are taken from a sequence when a row is inserted, but the rows
# become visible when their transaction commits, which can be in another
# order. So a fold cannot simply continue after the highest id it has seen:
# a lower id may still be in an open transaction. Each fold reads every row
# above ``ledger_id`` and then remembers the highest id it saw together with
# the next transaction id that PostgreSQL would assign (``xmax`` of a
# snapshot taken after the read, at the end of the fold). Every row up to
# that id was inserted by a transaction older than ``xmax``. A transaction
# gets its id at its first write, and an INSERT takes the row's id from the
# sequence just before it writes the row, far less than a round trip before
# ``xmax`` is read. When a later fold finds that no such transaction is still
# open (the ``xmin`` of its snapshot has reached ``xmax``), all those rows
# are visible to it, so ``ledger_id`` moves up. Rows that two folds both read
# are recomputed twice, which changes nothing.
#
# NOTE: ``xmin`` covers every database of the PostgreSQL server, so a long
# write transaction anywhere on it holds ``ledger_id`` back. Each fold then
# reads all the rows since again: slower, with the same figures.


def _locked_watermark(*, wait: bool = True) -> SummaryWatermark | None:
    # On SQLite this INSERT is also the transaction's first write. Because
    # SQLite has one writer at a time, no other transaction is writing ledger
    # rows while this fold reads them.
    SummaryWatermark.objects.bulk_create(
        [SummaryWatermark(pk=1)], ignore_conflicts=True
    )
    rows = SummaryWatermark.objects.select_for_update(skip_locked=not wait)
    return rows.filter(pk=1).first()


def _snapshot_bounds() -> tuple[int | None, int]:
    """Return the snapshot's oldest open transaction id and the last ledger id.

    The transaction id is None on databases other than PostgreSQL.
    """
    if connection.vendor != "postgresql":
        last = LedgerEntry.objects.aggregate(last=Max("id"))["last"]
        return None, last or 0
    table = connection.ops.quote_name(LedgerEntry._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
            f"(SELECT MAX(id) FROM {table})"
        )
        xmin, last = cursor.fetchone()
    return xmin, last or 0


def _next_xid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        return cursor.fetchone()[0]


def _advance(watermark, xmin, max_id) -> tuple[int, list]:
    """Return the new ``ledger_id`` and the pairs that are still unconfirmed."""
    if xmin is None:
        return max_id, []
    ledger_id, pending = watermark.ledger_id, []
    for seen_id, xmax in watermark.pending:
        if xmax <= xmin:
            ledger_id = max(ledger_id, seen_id)
        else:
            pending.append([seen_id, xmax])
    return ledger_id, [pair for pair in pending if pair[0] > ledger_id]


def _save(watermark, ledger_id, pending, xmin, max_id, **fields) -> None:
    if xmin is not None and max_id > ledger_id:
        pending = _remember(pending, [max_id, _next_xid()])
    SummaryWatermark.objects.filter(pk=watermark.pk).update(
        ledger_id=ledger_id,
        pending=pending,
        folded_at=datetime.datetime.now(datetime.UTC),
        **fields,
    )


def _remember_position() -> None:
    """Remember the last ledger id, then wait up to 5 s until it is confirmed.

    A rebuild reads every run and command, so once the ledger rows up to
    that id are known to be committed, the folds after it need not read
    them again.
    """
    if connection.vendor != "postgresql":
        return
    with transaction.atomic():
        watermark = _locked_watermark()
        xmin, max_id = _snapshot_bounds()
        if max_id <= watermark.ledger_id:
            return
        xmax = _next_xid()
        pending = _remember(watermark.pending, [max_id, xmax])
        SummaryWatermark.objects.filter(pk=watermark.pk).update(pending=pending)
    if connection.in_atomic_block:
        return  # the caller's own open transaction keeps the pair unconfirmed
    deadline = time.monotonic() + 5
    while _snapshot_bounds()[0] < xmax and time.monotonic() < deadline:
        time.sleep(0.1)


def _remember(pending: list, pair: list) -> list:
    # While a long transaction stays open, no pair is confirmed. Replacing
    # the newest pair keeps the list short and only delays ledger_id.
    if len(pending) >= MAX_PENDING:
        return [*pending[:-1], pair]
    return [*pending, pair]


# Recomputing facts.


def _fold_rows(after_id: int, max_id: int) -> int:
    rows = LedgerEntry.objects.filter(pk__gt=after_id, pk__lte=max_id)
    run_ids, command_ids = _touched(rows)
    for chunk in _chunks(run_ids):
        _refresh_runs(chunk)
    for chunk in _chunks(command_ids):
        _refresh_commands(chunk)
    return len(run_ids) + len(command_ids)


def _touched(rows) -> tuple[list[int], list[int]]:
    """Return the ids of the runs and commands that the ledger rows name.

    A row names a run or a command directly, through an exception case, or
    through its record: a rerun supersedes the failed run of the same
    record, and only the new run's rows name it. The ids are collected
    first and then looked up by index. With the ledger rows as subqueries,
    PostgreSQL 15 chose to scan the whole command and record tables.
    """
    run_ids, command_ids, case_ids, record_keys = set(), set(), set(), set()
    for run_id, command_id, case_id, record_key in rows.values_list(
        "run_id", "command_id", "case_id", "record_key"
    ).distinct():
        run_ids.add(run_id)
        command_ids.add(command_id)
        case_ids.add(case_id)
        record_keys.add(record_key)
    for chunk in _chunks(_known(case_ids)):
        for run_id, command_id in ExceptionCase.objects.filter(
            pk__in=chunk
        ).values_list("run_id", "command_id"):
            run_ids.add(run_id)
            command_ids.add(command_id)
    record_ids = set()
    for chunk in _chunks(sorted(_known(record_keys))):
        records = SourceRecord.objects.filter(record_key__in=chunk)
        record_ids.update(records.values_list("pk", flat=True))
    runs = _ids_of(SyncRun, pk=run_ids, command_id=command_ids, record_id=record_ids)
    commands = _ids_of(Command, pk=command_ids, record_id=record_ids)
    return runs, commands


def _known(values: set) -> list:
    return sorted(value for value in values if value not in (None, ""))


def _ids_of(model, **columns) -> list[int]:
    """Return the sorted ids of the rows whose columns hold any of the values.

    Each query ORs one chunk of every column's values, so a small fold reads
    each table once.
    """
    chunks = {name: list(_chunks(_known(values))) for name, values in columns.items()}
    found = set()
    for index in range(max(map(len, chunks.values()), default=0)):
        condition = Q()
        for name, parts in chunks.items():
            if index < len(parts):
                condition |= Q(**{f"{name}__in": parts[index]})
        rows = model.objects.filter(condition).order_by()
        found.update(rows.values_list("pk", flat=True))
    return sorted(found)


def _chunks(ids: list[int]):
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def _rebuild() -> int:
    """Recompute every fact and sum from the runs, commands and snapshots."""
    for model in SUMMARY_MODELS:
        model.objects.all().delete()
    count = 0
    for model, refresh in ((SyncRun, _refresh_runs), (Command, _refresh_commands)):
        last = 0
        while chunk := list(
            model.objects.filter(pk__gt=last)
            .order_by("pk")
            .values_list("pk", flat=True)[:CHUNK]
        ):
            refresh(chunk)
            count += len(chunk)
            last = chunk[-1]
    last = 0
    while chunk := list(
        ErpInvoiceSnapshot.objects.filter(pk__gt=last).order_by("pk")[:CHUNK]
    ):
        _apply_snapshots({}, {snapshot.command_id: snapshot for snapshot in chunk})
        last = chunk[-1].pk
    logger.info("KPI summary rebuilt from %s runs and commands", count)
    return count


def _refresh_runs(run_ids: list[int]) -> None:
    rows = (
        counted_runs()
        .filter(pk__in=run_ids)
        .annotate(kpi_clean=ExpressionWrapper(CLEAN_RUN, output_field=BooleanField()))
        .values_list(
            "pk",
            "created_at",
            "brief_version__brief_id",
            "record__connector_id",
            "record__business_unit",
            "command__destination_id",
            "kpi_clean",
            "kpi_has_case",
        )
    )
    facts = {}
    for pk, created_at, brief, connector, unit, destination, clean, excepted in rows:
        facts[pk] = SyncFact(
            run_id=pk,
            created_at=created_at,
            slot=slot_of(created_at),
            brief_id=brief,
            connector_id=connector,
            business_unit=unit,
            destination_id=destination,
            clean=clean,
            excepted=excepted,
        )
    old = SyncFact.objects.in_bulk(run_ids)
    _store(SyncFact, old, facts, run_ids)
    deltas = defaultdict(lambda: [0, 0, 0])
    for fact, sign in _changes(old, facts, run_ids):
        sums = deltas[_key(fact, SYNC_KEY)]
        sums[0] += sign
        sums[1] += sign * fact.clean
        sums[2] += sign * fact.excepted
    _apply(SyncSummary, SYNC_KEY, SYNC_SUMS, deltas)


def _refresh_commands(command_ids: list[int]) -> None:
    rows = (
        counted_commands()
        .filter(pk__in=command_ids)
        .values_list(
            "pk",
            "created_at",
            "brief_version__brief_id",
            "record__connector_id",
            "record__business_unit",
            "destination_id",
            "kpi_currency",
            "kpi_amount",
        )
    )
    facts = {}
    for pk, created_at, brief, connector, unit, destination, currency, amount in rows:
        facts[pk] = CommandFact(
            command_id=pk,
            created_at=created_at,
            slot=slot_of(created_at),
            brief_id=brief,
            connector_id=connector,
            business_unit=unit,
            destination_id=destination,
            currency=currency or "",
            amount=amount,
        )
    old = CommandFact.objects.in_bulk(command_ids)
    _store(CommandFact, old, facts, command_ids)
    deltas = defaultdict(lambda: [0, Decimal(0)])
    for fact, sign in _changes(old, facts, command_ids):
        sums = deltas[_key(fact, REVENUE_KEY)]
        sums[0] += sign
        sums[1] += sign * (fact.amount or 0)
    _apply(RevenueSummary, REVENUE_KEY, REVENUE_SUMS, deltas)


def _apply_snapshots(old: dict, new: dict) -> None:
    invoices = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    cash = defaultdict(lambda: [0, 0])
    for command_id in old.keys() | new.keys():
        for snapshot, sign in ((old.get(command_id), -1), (new.get(command_id), 1)):
            if snapshot is not None:
                _add_snapshot(invoices, cash, snapshot, sign)
    _apply(InvoiceSummary, INVOICE_KEY, INVOICE_SUMS, invoices)
    _apply(CashSummary, CASH_KEY, CASH_SUMS, cash)


def _add_snapshot(invoices, cash, snapshot, sign: int) -> None:
    """Add one snapshot's share of the sums, as the live sources count it."""
    key = (
        slot_of(snapshot.synced_at),
        snapshot.brief_id,
        snapshot.business_unit,
        snapshot.destination_id,
        snapshot.invoice_currency,
    )
    sums = invoices[key]
    sums[0] += sign
    sums[1] += sign * (Decimal(snapshot.credited_total) == 0)
    if snapshot.invoice_state in BILLED_STATES:
        sums[2] += sign
        if snapshot.invoice_total is not None:
            total = Decimal(snapshot.invoice_total) - Decimal(snapshot.credited_total)
            sums[3] += sign * total
    if snapshot.paid_on is not None and snapshot.crm_close_date is not None:
        key = (
            snapshot.paid_on,
            snapshot.brief_id,
            snapshot.business_unit,
            snapshot.destination_id,
        )
        cash[key][0] += sign
        cash[key][1] += sign * (snapshot.paid_on - snapshot.crm_close_date).days


def _values(fact) -> tuple:
    return tuple(getattr(fact, f.attname) for f in fact._meta.concrete_fields)


def _changes(old: dict, new: dict, ids):
    """Yield ``(fact, -1)`` for each removed fact and ``(fact, 1)`` for each
    added one. A changed fact yields both, an unchanged one nothing."""
    for pk in ids:
        before, after = old.get(pk), new.get(pk)
        if before is not None and after is not None:
            if _values(before) == _values(after):
                continue
        if before is not None:
            yield before, -1
        if after is not None:
            yield after, 1


def _store(model, old: dict, new: dict, ids) -> None:
    removed = [pk for pk in ids if pk in old and pk not in new]
    if removed:
        model.objects.filter(pk__in=removed).delete()
    changed = [
        fact
        for pk, fact in new.items()
        if pk not in old or _values(old[pk]) != _values(fact)
    ]
    if changed:
        fields = [f.name for f in model._meta.concrete_fields if not f.primary_key]
        model.objects.bulk_create(
            changed,
            update_conflicts=True,
            unique_fields=[model._meta.pk.name],
            update_fields=fields,
        )


def _key(row, fields) -> tuple:
    return tuple(getattr(row, name) for name in fields)


def _apply(model, key_fields, sum_fields, deltas: dict) -> None:
    """Add the deltas to the summary rows, creating and deleting rows.

    A row whose first sum (its count of facts) falls to zero is deleted, so
    that a segment without facts disappears as it does from the live query.
    """
    deltas = {key: sums for key, sums in deltas.items() if any(sums)}
    if not deltas:
        return
    firsts = {key[0] for key in deltas}
    rows = model.objects.filter(**{f"{key_fields[0]}__in": firsts})
    existing = {_key(row, key_fields): row for row in rows}
    created, updated, deleted = [], [], []
    for key, sums in deltas.items():
        row = existing.get(key)
        if row is None:
            row = model(**dict(zip(key_fields, key, strict=True)))
            for name in sum_fields:
                setattr(row, name, 0)
            created.append(row)
        for name, delta in zip(sum_fields, sums, strict=True):
            setattr(row, name, getattr(row, name) + delta)
        values = [getattr(row, name) for name in sum_fields]
        if values[0] < 0 or (values[0] == 0 and any(values)):
            raise SummaryDrift(f"{model.__name__} row {key} would hold {values}")
        if row.pk is None:
            continue
        if values[0] == 0:
            deleted.append(row.pk)
        else:
            updated.append(row)
    if created:
        model.objects.bulk_create(created)
    if updated:
        model.objects.bulk_update(updated, sum_fields)
    if deleted:
        model.objects.filter(pk__in=deleted).delete()
