"""KPIs on a prepared dataset, with exact values, empty periods and time zones.

The rows are built with the ORM; the times are fixed so that one sync falls on
2026-03-01 in UTC but on 2026-03-02 in Helsinki (UTC+2 in March). Like the
pipeline and the case services, the builder writes a ledger row for every run
and case, because the KPI summary finds its changes through the ledger, and
it stores invoice snapshots as reconciliation does.
"""

import datetime
import zoneinfo
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from exceptions.models import ExceptionCase, Lane
from meshline.roles import FINANCE
from reporting.models import ErpInvoiceSnapshot
from reporting.services.kpis import Filters, compute
from reporting.services.summary import store_snapshots
from syncflows.models import (
    Brief,
    BriefVersion,
    Command,
    Connector,
    Delivery,
    Destination,
    InboundEvent,
    LedgerEntry,
    RecordChange,
    SourceRecord,
    SyncRun,
)

pytestmark = pytest.mark.django_db

UTC = zoneinfo.ZoneInfo("UTC")
HELSINKI = zoneinfo.ZoneInfo("Europe/Helsinki")
DAY1 = datetime.date(2026, 3, 1)


def at(day: int, hour: int, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(2026, 3, day, hour, minute, tzinfo=datetime.UTC)


class Rows:
    """Builds pipeline rows directly; each record gets its own delivery and change."""

    def __init__(self):
        self.connector = Connector.objects.create(
            slug="hubspot-kpi", name="HubSpot", kind="hubspot", business_unit="emea"
        )
        self.sandbox = Destination.objects.create(
            slug="sandbox", name="Sandbox", adapter="sandbox"
        )
        self.tryton = Destination.objects.create(
            slug="tryton", name="Tryton", adapter="tryton"
        )
        self.lane = Lane.objects.create(
            slug="kpi-lane",
            name="KPI lane",
            owner_group=Group.objects.get(name=FINANCE),
        )
        self.count = 0

    def version(self, slug, keywords):
        brief = Brief.objects.create(
            slug=slug, name=slug, intent="x", keywords=keywords
        )
        return BriefVersion.objects.create(
            brief=brief, number=1, state="active", mapping={}, command_schema={}
        )

    def record(self, business_unit=""):
        self.count += 1
        index = self.count
        record = SourceRecord.objects.create(
            connector=self.connector,
            object_type="deal",
            record_id=str(index),
            record_key=f"hubspot-kpi:deal:{index}",
            business_unit=business_unit,
        )
        delivery = Delivery.objects.create(
            connector=self.connector,
            received_at=at(1, 0),
            source="webhook",
            status="accepted",
            content_hash=f"h{index}",
            body=b"{}",
            size=2,
        )
        event = InboundEvent.objects.create(
            delivery=delivery,
            connector=self.connector,
            position=0,
            dedupe_key=f"e{index}",
            object_type="deal",
            record_id=str(index),
            occurred_at=at(1, 0),
            payload={},
            received_at=at(1, 0),
        )
        change = RecordChange.objects.create(
            record=record,
            event=event,
            change_type="update",
            revision=1,
            occurred_at=at(1, 0),
            state={},
            previous={},
            status="matched",
        )
        return record, change

    def sync(
        self,
        version,
        when,
        *,
        state="queued",
        command_state="succeeded",
        destination=None,
        amount="100.00",
        currency="EUR",
        business_unit="",
    ):
        record, change = self.record(business_unit)
        command = None
        if state == "queued":
            command = Command.objects.create(
                idempotency_key=f"k{self.count}",
                command_type="sales_order.create",
                brief_version=version,
                record=record,
                destination=destination or self.sandbox,
                payload={"crm_amount": amount, "total": amount, "currency": currency},
                payload_hash="x",
                ordering_key=record.record_key,
                state=command_state,
                next_attempt_at=when,
                finished_at=when,
                erp_reference=f"sandbox.order:{self.count}",
            )
            Command.objects.filter(pk=command.pk).update(created_at=when)
        run = SyncRun.objects.create(
            brief_version=version,
            change=change,
            record=record,
            state=state,
            command=command,
        )
        SyncRun.objects.filter(pk=run.pk).update(created_at=when)
        LedgerEntry.objects.create(
            step="enqueue" if command else "validate",
            ok=command is not None,
            message="built for the KPI tests",
            record_key=record.record_key,
            run=run,
            command=command,
        )
        return run, command

    def case(
        self,
        opened,
        *,
        run=None,
        command=None,
        keyword="",
        acknowledged=None,
        closed=None,
        state="open",
        due_hours=24,
    ):
        case = ExceptionCase.objects.create(
            reason_code="erp_rejected",
            title="t",
            message="m",
            lane=self.lane,
            owner_group=self.lane.owner_group,
            record_key="r",
            keyword=keyword,
            run=run,
            command=command,
            opened_at=opened,
            due_at=opened + datetime.timedelta(hours=due_hours),
            acknowledged_at=acknowledged,
            closed_at=closed,
            state=state,
        )
        LedgerEntry.objects.create(
            step="exception",
            ok=False,
            message=f"Exception case {case.pk} opened.",
            record_key=case.record_key,
            case_id=case.pk,
            run=run,
            command=command,
        )
        return case

    def snapshot(
        self,
        command,
        *,
        close,
        paid=None,
        total="100.00",
        credited="0",
        state="posted",
        currency="EUR",
        business_unit="",
    ):
        snapshot = ErpInvoiceSnapshot(
            command=command,
            destination=command.destination,
            brief=command.brief_version.brief,
            business_unit=business_unit,
            synced_at=command.finished_at,
            crm_close_date=close,
            crm_amount=Decimal(total),
            crm_currency=currency,
            invoice_state=state,
            invoice_currency=currency,
            invoice_total=Decimal(total),
            credited_total=Decimal(credited),
            paid_on=paid,
            fetched_at=command.finished_at,
        )
        store_snapshots([snapshot])
        return snapshot


@pytest.fixture
def dataset():
    return build_dataset()


def build_dataset() -> Rows:
    rows = Rows()
    discounts = rows.version("brief-a", ["discounts"])
    cpq = rows.version("brief-b", ["CPQ"])
    person = User.objects.create_user("fiona")

    _r1, c1 = rows.sync(discounts, at(1, 10), amount="100.00", business_unit="emea")
    _r2, c2 = rows.sync(discounts, at(1, 11), amount="200.00", business_unit="emea")
    LedgerEntry.objects.create(
        step="action", message="released", command=c2, actor=person, record_key="r"
    )
    r3, _ = rows.sync(discounts, at(1, 12), state="failed", business_unit="emea")
    # 22:30 UTC on 1 March is 00:30 on 2 March in Helsinki.
    _r4, c4 = rows.sync(
        cpq,
        at(1, 22, 30),
        destination=rows.tryton,
        amount="300.00",
        currency="USD",
        business_unit="apac",
    )

    hour = datetime.timedelta(hours=1)
    rows.case(
        at(1, 12),
        run=r3,
        keyword="discounts",
        acknowledged=at(1, 12) + 2 * hour,
        closed=at(1, 12) + 5 * hour,
        state="resolved",
    )
    rows.case(
        at(1, 13),
        keyword="discounts",
        acknowledged=at(1, 13) + 4 * hour,
        due_hours=1,
        state="acknowledged",
    )
    rows.case(at(1, 14), keyword="CPQ", closed=at(1, 14) + 30 * hour, state="resolved")

    rows.snapshot(
        c1,
        close=datetime.date(2026, 2, 20),
        paid=datetime.date(2026, 3, 2),
        total="100.00",
        business_unit="emea",
    )
    rows.snapshot(
        c2,
        close=datetime.date(2026, 2, 25),
        paid=datetime.date(2026, 3, 2),
        total="200.00",
        credited="100.00",
        state="paid",
        business_unit="emea",
    )
    rows.snapshot(
        c4,
        close=datetime.date(2026, 2, 27),
        total="300.00",
        currency="USD",
        business_unit="apac",
    )
    return rows


def kpis(tz=UTC, start=DAY1, end=datetime.date(2026, 3, 3), **options):
    return compute(Filters(start=start, end=end, tz=tz, **options))


def kpi(result, key):
    return next(k for k in result["kpis"] if k["key"] == key)


def values(result, key, segment="all"):
    series = next(s for s in kpi(result, key)["series"] if s["segment"] == segment)
    return [point["value"] for point in series["points"]]


def test_success_and_exception_rate_utc(dataset):
    result = kpis()
    assert result["buckets"] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert values(result, "success_rate") == ["50.0", None, None]
    assert values(result, "exception_rate") == ["25.0", None, None]
    point = kpi(result, "success_rate")["series"][0]["points"][0]
    assert point["numerator"] == "2"
    assert point["denominator"] == "4"


def test_days_follow_viewer_time_zone(dataset):
    result = kpis(tz=HELSINKI)
    assert values(result, "success_rate") == ["33.3", "100.0", None]
    assert values(result, "exception_rate") == ["33.3", "0.0", None]
    assert values(result, "invoice_accuracy") == ["50.0", "100.0", None]


def test_case_durations_and_sla(dataset):
    result = kpis()
    assert values(result, "time_to_triage") == ["3.00", None, None]
    assert values(result, "time_to_resolve") == ["17.50", None, None]
    assert values(result, "sla_compliance") == ["33.3", None, None]


def test_days_to_cash_and_accuracy(dataset):
    result = kpis()
    assert values(result, "days_to_cash") == [None, "7.5", None]
    assert values(result, "invoice_accuracy") == ["66.7", None, None]


def test_revenue_per_currency(dataset):
    revenue = {s["currency"]: s for s in kpis()["revenue"]["series"]}
    assert sorted(revenue) == ["EUR", "USD"]
    assert revenue["EUR"]["totals"] == {"expected": "300.00", "invoiced": "200.00"}
    assert revenue["USD"]["totals"] == {"expected": "300.00", "invoiced": "300.00"}
    assert [p["value"] for p in revenue["EUR"]["expected"]] == [
        "300.00",
        "0.00",
        "0.00",
    ]


def test_empty_period_has_no_values(dataset):
    result = kpis(start=datetime.date(2026, 4, 1), end=datetime.date(2026, 4, 2))
    for item in result["kpis"]:
        assert [p["value"] for p in item["series"][0]["points"]] == [None, None], item[
            "key"
        ]
        assert item["totals"]["all"]["denominator"] == "0"
    assert result["revenue"]["series"] == []


def test_segment_by_keyword(dataset):
    result = kpis(segment="keyword")
    totals = kpi(result, "success_rate")["totals"]
    assert totals["discounts"]["value"] == "33.3"
    assert totals["CPQ"]["value"] == "100.0"
    cases = kpi(result, "sla_compliance")["totals"]
    assert cases["discounts"]["value"] == "50.0"
    assert cases["CPQ"]["value"] == "0.0"


def test_segment_by_business_unit_and_destination(dataset):
    by_unit = kpi(kpis(segment="business_unit"), "success_rate")["totals"]
    assert by_unit["emea"]["value"] == "33.3"
    assert by_unit["apac"]["value"] == "100.0"
    by_destination = kpi(kpis(segment="destination"), "success_rate")["totals"]
    assert by_destination["sandbox"]["value"] == "50.0"
    assert by_destination["tryton"]["value"] == "100.0"
    assert by_destination["(none)"]["value"] == "0.0"


def test_filter_by_keyword(dataset):
    result = kpis(keyword="CPQ")
    assert values(result, "success_rate") == ["100.0", None, None]
    assert values(result, "sla_compliance") == ["0.0", None, None]


def test_pilot_comparison(dataset):
    result = kpis(tz=HELSINKI, pilot=datetime.date(2026, 3, 2))
    comparison = kpi(result, "success_rate")["comparison"]["all"]
    assert comparison["before"]["value"] == "33.3"
    assert comparison["after"]["value"] == "100.0"
    revenue = {s["currency"]: s for s in result["revenue"]["series"]}
    assert revenue["USD"]["comparison"]["before"]["expected"] == "0.00"
    assert revenue["USD"]["comparison"]["after"]["expected"] == "300.00"


def test_month_bucket(dataset):
    result = kpis(bucket="month", end=datetime.date(2026, 4, 15))
    assert result["buckets"] == ["2026-03-01", "2026-04-01"]
    assert values(result, "success_rate") == ["50.0", None]


def test_query_count_is_constant(dataset):
    with CaptureQueriesContext(connection) as few:
        kpis(segment="keyword")
    rows = dataset
    version = BriefVersion.objects.get(brief__slug="brief-a")
    for hour in range(10):
        rows.sync(version, at(2, hour))
    with CaptureQueriesContext(connection) as more:
        kpis(segment="keyword")
    assert len(more) == len(few)
    if connection.vendor == "postgresql":
        # The fold takes 22: a savepoint and its release, the watermark's
        # insert and lock, and the snapshot bounds. Then it reads what the
        # new ledger rows name, the cases and records they name, and the
        # runs and commands of all three. For runs and for commands it reads
        # the new and the old facts, inserts the facts, reads the summary
        # rows and inserts them. It ends with the next transaction id and the
        # watermark update. Then come seven aggregate queries, with a
        # savepoint, "SET LOCAL jit" and the release around them (10).
        assert len(more) == 32
