"""The KPI summary gives exactly the figures of the live queries.

Each change below writes the rows that the Meshline service making it
writes: the same state change and the same ledger row.
"""

import datetime
import io
import re
import threading
import zoneinfo

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from exceptions.services.actions import acknowledge_case
from exceptions.services.cases import open_case_for_failure
from meshline.roles import TRIAGE_LEAD
from reporting.models import (
    CashSummary,
    InvoiceSummary,
    RevenueSummary,
    SyncFact,
    SyncSummary,
)
from reporting.services import kpis, summary
from reporting.services.kpis import Filters, compute
from syncflows.models import Command, LedgerEntry, SyncRun
from syncflows.services.failures import Failure
from tests.conftest import make_user
from tests.test_kpis import DAY1, HELSINKI, UTC, Rows, at, build_dataset

KOLKATA = zoneinfo.ZoneInfo("Asia/Kolkata")  # UTC+05:30
KATHMANDU = zoneinfo.ZoneInfo("Asia/Kathmandu")  # UTC+05:45
END = datetime.date(2026, 3, 3)
PILOT = datetime.date(2026, 3, 2)
FILTERS = [
    {},
    {"tz": HELSINKI, "segment": "keyword", "pilot": PILOT},
    {"tz": KOLKATA, "segment": "business_unit"},
    {"tz": KATHMANDU, "segment": "destination", "bucket": "week"},
    {"bucket": "month", "end": datetime.date(2026, 4, 30)},
    {"keyword": "discounts", "segment": "destination"},
    {"business_unit": "emea", "pilot": PILOT},
    {"destination": "tryton"},
    {"destination": "(none)", "segment": "keyword"},
]


def filters(**options) -> Filters:
    options.setdefault("tz", UTC)
    options.setdefault("start", DAY1)
    options.setdefault("end", END)
    return Filters(**options)


def summed_tables(queries) -> set[str]:
    """Return the tables that the KPI aggregate queries read."""
    tables = set()
    for query in queries.captured_queries:
        if "kpi_bucket" in query["sql"]:
            tables.update(re.findall(r'FROM "(\w+)"', query["sql"]))
    return tables


def from_summary(chosen: Filters) -> dict:
    """Compute the KPIs from the summary, and check that it was read."""
    with CaptureQueriesContext(connection) as queries:
        result = compute(chosen)
    assert summed_tables(queries) == {
        "reporting_syncsummary",
        "exceptions_exceptioncase",
        "reporting_cashsummary",
        "reporting_invoicesummary",
        "reporting_revenuesummary",
    }
    return result


def assert_summary_equals_live():
    for options in FILTERS:
        chosen = filters(**options)
        assert from_summary(chosen) == compute(chosen, live=True), options


def totals(result, key) -> dict:
    item = next(k for k in result["kpis"] if k["key"] == key)
    return item["totals"]["all"]


def expected_revenue(result) -> dict:
    return {s["currency"]: s["totals"]["expected"] for s in result["revenue"]["series"]}


def ledger(step, command=None, run=None, **refs):
    record = (command or run).record
    LedgerEntry.objects.create(
        step=step,
        message=step,
        record_key=record.record_key,
        command=command,
        run=run,
        **refs,
    )


@pytest.fixture
def dataset(db):
    return build_dataset()


@pytest.mark.django_db
def test_summary_equals_live_on_dataset(dataset):
    result = from_summary(filters())

    assert totals(result, "success_rate")["numerator"] == "2"
    assert totals(result, "success_rate")["denominator"] == "4"
    assert totals(result, "days_to_cash")["value"] == "7.5"
    assert expected_revenue(result) == {"EUR": "300.00", "USD": "300.00"}
    assert_summary_equals_live()


@pytest.mark.django_db
def test_summary_follows_each_change(dataset):
    version = dataset.version("brief-c", ["discounts"])
    pending_run, pending = dataset.sync(
        version, at(2, 9), command_state="pending", amount="150.00"
    )
    assert_summary_equals_live()

    # A command succeeds (dispatch writes an execute row).
    Command.objects.filter(pk=pending.pk).update(state="succeeded")
    ledger("execute", command=pending)
    result = from_summary(filters())
    assert totals(result, "success_rate")["numerator"] == "3"
    assert_summary_equals_live()

    # A command is compensated (the compensation service).
    c1 = Command.objects.get(payload__crm_amount="100.00")
    Command.objects.filter(pk=c1.pk).update(state="compensated")
    ledger("compensate", command=c1)
    assert expected_revenue(from_summary(filters()))["EUR"] == "350.00"
    assert_summary_equals_live()

    # A case opens on the command that just succeeded, and a person
    # acknowledges it.
    case = open_case_for_failure(
        Failure(
            reason_code="erp_rejected",
            message="The ERP rejected the order.",
            record_key=pending.record.record_key,
            command=pending,
            brief=version.brief,
            destination=pending.destination,
        )
    )
    acknowledge_case(case, acting_user=make_user("tuula", TRIAGE_LEAD))
    result = from_summary(filters())
    assert totals(result, "success_rate")["numerator"] == "1"
    assert totals(result, "exception_rate")["numerator"] == "2"
    assert_summary_equals_live()

    # A rerun supersedes the failed run; only the new run's rows name it.
    failed = SyncRun.objects.get(state="failed")
    SyncRun.objects.filter(pk=failed.pk).update(state="superseded")
    rerun = SyncRun.objects.create(
        brief_version=failed.brief_version,
        change=failed.change,
        record=failed.record,
        state="failed",
    )
    ledger("validate", run=rerun, ok=False)
    assert_summary_equals_live()

    # A newer payload supersedes a command (the outbox).
    Command.objects.filter(pk=pending.pk).update(state="superseded")
    ledger("supersede", command=pending)
    assert_summary_equals_live()

    # Reconciliation finds the USD invoice paid and partly credited.
    c4 = Command.objects.get(payload__currency="USD")
    dataset.snapshot(
        c4,
        close=datetime.date(2026, 2, 27),
        paid=datetime.date(2026, 3, 3),
        total="300.00",
        credited="30.00",
        state="paid",
        currency="USD",
        business_unit="apac",
    )
    result = from_summary(filters())
    assert totals(result, "days_to_cash")["denominator"] == "3"
    assert totals(result, "invoice_accuracy")["numerator"] == "1"
    assert_summary_equals_live()
    assert pending_run.pk in set(SyncFact.objects.values_list("run_id", flat=True))


def summary_rows() -> dict:
    tables = {}
    for model in (SyncSummary, RevenueSummary, InvoiceSummary, CashSummary):
        names = [f.attname for f in model._meta.concrete_fields if not f.primary_key]
        tables[model.__name__] = sorted(model.objects.values_list(*names))
    return tables


@pytest.mark.django_db
def test_rebuild_gives_same_rows(dataset):
    version = dataset.version("brief-c", ["CPQ"])
    for hour in range(6):
        dataset.sync(version, at(2, hour, 50), amount=f"{hour}.50")
    summary.fold()
    folded = summary_rows()

    summary.rebuild()

    assert summary_rows() == folded
    assert len(folded["SyncSummary"]) == 10


def reads_summary(chosen: Filters) -> bool:
    with CaptureQueriesContext(connection) as queries:
        compute(chosen)
    return "reporting_syncsummary" in summed_tables(queries)


@pytest.mark.django_db
def test_lost_summary_rows_need_rebuild(dataset):
    summary.fold()
    SyncSummary.objects.all().delete()
    c1 = Command.objects.get(payload__crm_amount="100.00")
    open_case_for_failure(
        Failure(
            reason_code="erp_rejected",
            message="The ERP rejected the order.",
            record_key=c1.record.record_key,
            command=c1,
        )
    )

    assert not reads_summary(filters())
    assert summary.needs_rebuild()
    assert compute(filters()) == compute(filters(), live=True)

    call_command("rebuild_kpi_summary", stdout=io.StringIO())

    assert not summary.needs_rebuild()
    assert_summary_equals_live()


@pytest.mark.django_db
def test_long_backlog_reads_live(dataset, monkeypatch):
    summary.fold()
    dataset.sync(dataset.version("brief-c", ["CPQ"]), at(2, 8))
    monkeypatch.setattr(kpis, "PAGE_FOLD_ROWS", 0)

    assert not reads_summary(filters())
    assert compute(filters()) == compute(filters(), live=True)
    assert totals(compute(filters()), "success_rate")["denominator"] == "5"


@pytest.mark.django_db
def test_fold_query_count_does_not_grow(dataset):
    version = dataset.version("brief-c", ["CPQ"])
    for hour in range(3):
        dataset.sync(version, at(2, hour))
    with CaptureQueriesContext(connection) as few:
        summary.fold()
    for minute in range(0, 600, 5):
        dataset.sync(version, at(2, 3) + datetime.timedelta(minutes=minute))
    with CaptureQueriesContext(connection) as many:
        summary.fold()

    assert len(many) == len(few)
    assert SyncFact.objects.count() == 4 + 3 + 120


def test_covers_zones_with_quarter_hour_offsets():
    for zone in (UTC, HELSINKI, KOLKATA, KATHMANDU):
        assert summary.covers(filters(tz=zone, pilot=PILOT)), zone
    # Amsterdam kept its local mean time, UTC+00:19:32, until 1937.
    amsterdam = zoneinfo.ZoneInfo("Europe/Amsterdam")
    old = filters(
        tz=amsterdam, start=datetime.date(1930, 1, 1), end=datetime.date(1930, 1, 2)
    )
    assert not summary.covers(old)


@pytest.mark.django_db
def test_uncovered_zone_reads_live(dataset):
    amsterdam = zoneinfo.ZoneInfo("Europe/Amsterdam")
    old = filters(
        tz=amsterdam, start=datetime.date(1930, 1, 1), end=datetime.date(1930, 1, 2)
    )
    with CaptureQueriesContext(connection) as queries:
        result = compute(old)
    assert "reporting_syncsummary" not in summed_tables(queries)
    assert "syncflows_syncrun" in summed_tables(queries)
    assert totals(result, "success_rate")["denominator"] == "0"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_fold_waits_for_open_transaction():
    """A ledger row of a transaction still open when a later row commits."""
    rows = Rows()
    version = rows.version("brief-a", ["discounts"])
    rows.sync(version, at(1, 10))
    summary.fold()
    inserted, release = threading.Event(), threading.Event()

    def slow_writer():
        try:
            with transaction.atomic():
                rows.sync(version, at(1, 11))
                inserted.set()
                release.wait(30)
        finally:
            connection.close()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    try:
        assert inserted.wait(30)
        rows.sync(version, at(1, 12))
        summary.fold()
        summary.fold()
        assert totals(from_summary(filters()), "success_rate")["denominator"] == "2"
    finally:
        release.set()
        writer.join(30)

    result = from_summary(filters())
    assert totals(result, "success_rate")["denominator"] == "3"
    assert result == compute(filters(), live=True)


@pytest.mark.django_db
def test_scheduled_fold_reports_rebuild_once(dataset, caplog, monkeypatch):
    from django_q.models import Schedule

    from reporting import tasks
    from reporting.models import SummaryWatermark

    assert Schedule.objects.get(name="meshline-kpi-summary").minutes == 1
    assert tasks.fold_kpi_summary()["facts"] == 7
    monkeypatch.setattr(tasks, "_rebuild_reported", False)
    SummaryWatermark.objects.update(rebuild=True)

    assert tasks.fold_kpi_summary() == {"facts": None}
    assert tasks.fold_kpi_summary() == {"facts": None}
    warnings = [r for r in caplog.records if "needs a rebuild" in r.getMessage()]
    assert len(warnings) == 1
