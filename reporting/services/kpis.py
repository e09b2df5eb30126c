"""The KPIs, computed as SQL aggregates over the ledger, commands, cases and
the ERP invoice snapshots. No query loads the rows it measures.

Every KPI is a ratio or an average, so each query returns, per time bucket,
segment and pilot period, the sums that the value is made of (a numerator
and a denominator). Totals and the before/after comparison add those sums
up instead of averaging averages, and the number of queries does not grow
with the data: one query per source table. The sources and the definition
of each KPI are in ``reporting.services.kpi_sources``. All but the case
sources read the KPI summary that ``reporting.services.summary`` keeps, which
sums the same rows per 15-minute slot.
"""

import contextlib
import datetime
import logging
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import DatabaseError, connection, transaction
from django.db.models import Case, CharField, DateField, DateTimeField, Value, When
from django.db.models.functions import Trunc
from django.utils import timezone

from meshline import money
from reporting.services import summary
from reporting.services.kpi_sources import (
    NONE_LABEL,
    Source,
    accuracy_source,
    accuracy_summary_source,
    case_source,
    cash_source,
    cash_summary_source,
    expected_source,
    expected_summary_source,
    invoiced_source,
    invoiced_summary_source,
    sync_source,
    sync_summary_source,
)
from syncflows.models import Brief

logger = logging.getLogger(__name__)

# Ledger rows that a request folds at most before it reads the summary. With
# more waiting, it computes the KPIs live and leaves them to the fold that a
# schedule runs every minute. In bench/dashboard.py, over 1,000,000 ledger
# rows, folding 10,000 new ones took about as long as computing live.
PAGE_FOLD_ROWS = 10_000


@dataclass(frozen=True)
class Sources:
    """The query builders of the KPI sums, over the tables or the summary."""

    kpis: tuple  # one per KPI table, in the order of aggregation
    expected: object
    invoiced: object


LIVE = Sources(
    (sync_source, case_source, cash_source, accuracy_source),
    expected_source,
    invoiced_source,
)
# Exception cases are read live: their SLA figures depend on the current time.
SUMMARY = Sources(
    (sync_summary_source, case_source, cash_summary_source, accuracy_summary_source),
    expected_summary_source,
    invoiced_summary_source,
)

BUCKETS = ("day", "week", "month")
SEGMENTS = ("none", "keyword", "business_unit", "destination")
NO_SEGMENT = "all"


@dataclass
class Filters:
    start: datetime.date
    end: datetime.date  # inclusive
    tz: zoneinfo.ZoneInfo
    bucket: str = "day"
    segment: str = "none"
    keyword: str = ""
    business_unit: str = ""
    destination: str = ""
    pilot: datetime.date | None = None

    def start_at(self) -> datetime.datetime:
        return datetime.datetime.combine(self.start, datetime.time(), self.tz)

    def end_at(self) -> datetime.datetime:
        day_after = self.end + datetime.timedelta(days=1)
        return datetime.datetime.combine(day_after, datetime.time(), self.tz)

    def pilot_at(self) -> datetime.datetime | None:
        if self.pilot is None:
            return None
        return datetime.datetime.combine(self.pilot, datetime.time(), self.tz)


@dataclass
class KPI:
    key: str
    label: str
    unit: str  # percent, hours, days or money
    description: str
    parts: tuple  # (numerator, denominator) sum names
    scale: Decimal = Decimal(1)
    places: Decimal = Decimal("0.1")


KPIS = [
    KPI(
        "success_rate",
        "Success rate",
        "percent",
        "Syncs completed without human intervention.",
        ("clean", "syncs"),
        Decimal(100),
    ),
    KPI(
        "exception_rate",
        "Exception rate",
        "percent",
        "Syncs that opened at least one exception case.",
        ("excepted", "syncs"),
        Decimal(100),
    ),
    KPI(
        "time_to_triage",
        "Time to triage",
        "hours",
        "Average hours from a case opening to its acknowledgement.",
        ("triage_seconds", "triaged"),
        Decimal(1) / 3600,
        Decimal("0.01"),
    ),
    KPI(
        "time_to_resolve",
        "Time to resolve",
        "hours",
        "Average hours from a case opening to its resolution.",
        ("resolve_seconds", "resolved"),
        Decimal(1) / 3600,
        Decimal("0.01"),
    ),
    KPI(
        "sla_compliance",
        "SLA compliance",
        "percent",
        "Cases closed within their SLA, of cases closed or past due.",
        ("sla_met", "sla_due"),
        Decimal(100),
    ),
    KPI(
        "days_to_cash",
        "Days to cash",
        "days",
        "Average days from the CRM close date to the ERP payment date.",
        ("cash_seconds", "paid"),
        Decimal(1) / 86400,
    ),
    KPI(
        "invoice_accuracy",
        "Invoice accuracy",
        "percent",
        "Synced invoices that no credit note corrected.",
        ("accurate", "invoices"),
        Decimal(100),
    ),
]
KPI_BY_KEY = {kpi.key: kpi for kpi in KPIS}


# Bucketing and segmenting.


def bucket_starts(filters: Filters) -> list[datetime.date]:
    """Return every bucket start from the range's first to its last day."""
    first = _bucket_of(filters.start, filters.bucket)
    starts = []
    current = first
    while current <= filters.end:
        starts.append(current)
        current = _next_bucket(current, filters.bucket)
    return starts


def _bucket_of(day: datetime.date, bucket: str) -> datetime.date:
    if bucket == "week":
        return day - datetime.timedelta(days=day.weekday())
    if bucket == "month":
        return day.replace(day=1)
    return day


def _next_bucket(day: datetime.date, bucket: str) -> datetime.date:
    if bucket == "week":
        return day + datetime.timedelta(days=7)
    if bucket == "month":
        return (day.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
    return day + datetime.timedelta(days=1)


def _trunc(field_name: str, filters: Filters, *, is_date=False):
    if is_date:
        return Trunc(field_name, filters.bucket, output_field=DateField())
    return Trunc(
        field_name, filters.bucket, output_field=DateTimeField(), tzinfo=filters.tz
    )


def _period(field_name: str, filters: Filters, *, is_date=False):
    pilot = filters.pilot if is_date else filters.pilot_at()
    if pilot is None:
        return Value("", output_field=CharField())
    return Case(
        When(**{f"{field_name}__lt": pilot}, then=Value("before")),
        default=Value("after"),
        output_field=CharField(),
    )


def _bucket_date(value, filters: Filters) -> datetime.date:
    if isinstance(value, datetime.datetime):
        if timezone.is_aware(value):
            value = value.astimezone(filters.tz)
        return value.date()
    return value


@dataclass
class Sums:
    """Summed parts per (bucket, segment), per segment and per pilot period."""

    by_bucket: dict = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Decimal))
    )
    by_segment: dict = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Decimal))
    )
    by_period: dict = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Decimal))
    )
    segments: set = field(default_factory=set)


def aggregate(
    source: Source, filters: Filters, brief_keywords: dict, into: Sums
) -> None:
    """Run one grouped query and add its sums into ``into``."""
    segment_expr = source.segments.get(filters.segment)
    queryset = source.queryset.annotate(
        kpi_bucket=_trunc(source.time_field, filters, is_date=source.is_date),
        kpi_period=_period(source.time_field, filters, is_date=source.is_date),
        kpi_segment=segment_expr if segment_expr is not None else Value(NO_SEGMENT),
    )
    rows = (
        queryset.order_by()
        .values("kpi_bucket", "kpi_period", "kpi_segment")
        .annotate(**source.sums)
    )
    by_brief = filters.segment == "keyword" and source.segments.get("keyword_by_brief")
    for row in rows:
        labels = [row["kpi_segment"]]
        if by_brief:
            labels = brief_keywords.get(row["kpi_segment"]) or [NONE_LABEL]
        bucket = _bucket_date(row["kpi_bucket"], filters)
        for label in labels:
            label = str(label)
            into.segments.add(label)
            for name in source.sums:
                value = _number(row[name])
                into.by_bucket[(bucket, label)][name] += value
                into.by_segment[label][name] += value
                if row["kpi_period"]:
                    into.by_period[(row["kpi_period"], label)][name] += value


def _number(value) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, datetime.timedelta):
        return (
            Decimal(value.days * 86400 + value.seconds)
            + Decimal(value.microseconds) / 10**6
        )
    return Decimal(value)


# Putting it together.


def _brief_keywords() -> dict:
    return {
        pk: list(keywords or [])
        for pk, keywords in Brief.objects.values_list("pk", "keywords")
    }


def _brief_ids(filters: Filters, keywords: dict):
    if not filters.keyword:
        return None
    return [pk for pk, words in keywords.items() if filters.keyword in words]


@contextlib.contextmanager
def _without_jit():
    """Turn PostgreSQL's JIT off for the KPI queries.

    Their cost estimates pass the JIT thresholds on large tables. With
    1,000,000 ledger rows, JIT compiling took 3.7 s for the sync query, which
    runs in about 0.4 s without it (PostgreSQL 15, bench/dashboard.py on 2
    cores).
    """
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")
        yield


def compute(filters: Filters, *, live: bool = False) -> dict:
    """Compute every KPI for the filters; return a JSON-ready dict.

    Every KPI but the case figures comes from the KPI summary, after a
    fold, unless ``live`` is set or the summary's slots do not fit the
    buckets. Then they are aggregated from the sync runs, commands and
    snapshots themselves. Both ways give the same figures.
    """
    from_summary = not live and summary.covers(filters) and _fold()
    with _without_jit():
        return _compute(filters, SUMMARY if from_summary else LIVE)


def _fold() -> bool:
    """Fold the new ledger rows into the summary; return whether that worked.

    It returns False when the fold fails, when another fold holds the
    summary's lock, when more than PAGE_FOLD_ROWS ledger rows wait for the
    scheduled fold, and when the summary needs a rebuild. Then the KPIs are
    computed live.
    """
    try:
        return summary.fold(wait=False, max_rows=PAGE_FOLD_ROWS) is not None
    except DatabaseError:
        logger.exception(
            "Folding the KPI summary failed; the KPIs are computed from the "
            "sync runs, commands and snapshots instead"
        )
        return False


def _compute(filters: Filters, sources: Sources) -> dict:
    keywords = _brief_keywords()
    brief_ids = _brief_ids(filters, keywords)
    sums = Sums()
    for make in sources.kpis:
        aggregate(make(filters, brief_ids), filters, keywords, sums)
    buckets = bucket_starts(filters)
    segments = sorted(sums.segments) or [NO_SEGMENT]
    return {
        "filters": describe_filters(filters),
        "buckets": [b.isoformat() for b in buckets],
        "segments": segments,
        "kpis": [_kpi_result(kpi, sums, buckets, segments, filters) for kpi in KPIS],
        "revenue": revenue(filters, brief_ids, keywords, buckets, sources),
    }


def ratio(kpi: KPI, parts: dict) -> str | None:
    numerator, denominator = (parts.get(name, Decimal(0)) for name in kpi.parts)
    if not denominator:
        return None
    value = numerator * kpi.scale / denominator
    return str(value.quantize(kpi.places))


def _kpi_result(kpi, sums, buckets, segments, filters) -> dict:
    series = []
    for segment in segments:
        points = []
        for bucket in buckets:
            parts = sums.by_bucket.get((bucket, segment), {})
            points.append(_point(kpi, parts, bucket=bucket.isoformat()))
        series.append({"segment": segment, "points": points})
    result = {
        "key": kpi.key,
        "label": kpi.label,
        "unit": kpi.unit,
        "description": kpi.description,
        "series": series,
        "totals": {s: _point(kpi, sums.by_segment.get(s, {})) for s in segments},
    }
    if filters.pilot is not None:
        result["comparison"] = {
            s: {
                period: _point(kpi, sums.by_period.get((period, s), {}))
                for period in ("before", "after")
            }
            for s in segments
        }
    return result


def _point(kpi, parts, **extra) -> dict:
    numerator, denominator = (parts.get(name, Decimal(0)) for name in kpi.parts)
    return {
        **extra,
        "value": ratio(kpi, parts),
        "numerator": _plain(numerator),
        "denominator": _plain(denominator),
    }


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f") if value else "0"
    return text


def describe_filters(filters: Filters) -> dict:
    return {
        "start": filters.start.isoformat(),
        "end": filters.end.isoformat(),
        "time_zone": filters.tz.key,
        "bucket": filters.bucket,
        "segment": filters.segment,
        "keyword": filters.keyword,
        "business_unit": filters.business_unit,
        "destination": filters.destination,
        "pilot": filters.pilot.isoformat() if filters.pilot else None,
    }


# Revenue, per currency.


def revenue(
    filters: Filters, brief_ids, keywords: dict, buckets, sources: Sources = LIVE
) -> dict:
    """Sum expected and invoiced revenue per bucket, segment and currency."""
    expected = _revenue_rows(sources.expected(filters, brief_ids), filters, keywords)
    invoiced = _revenue_rows(sources.invoiced(filters, brief_ids), filters, keywords)
    keys = sorted({(seg, cur) for seg, cur, *_ in expected + invoiced})
    series = []
    for segment, currency in keys:
        series.append(
            {
                "segment": segment,
                "currency": currency,
                "expected": _money_points(expected, segment, currency, buckets),
                "invoiced": _money_points(invoiced, segment, currency, buckets),
                "totals": {
                    name: _money(_sum_rows(rows, segment, currency), currency)
                    for name, rows in (("expected", expected), ("invoiced", invoiced))
                },
                "comparison": {
                    period: {
                        name: _money(
                            _sum_rows(rows, segment, currency, period=period), currency
                        )
                        for name, rows in (
                            ("expected", expected),
                            ("invoiced", invoiced),
                        )
                    }
                    for period in ("before", "after")
                }
                if filters.pilot
                else None,
            }
        )
    return {
        "key": "revenue",
        "label": "Revenue expected and invoiced",
        "series": series,
    }


def _revenue_rows(source: Source, filters, keywords) -> list[tuple]:
    """Return ``(segment, currency, bucket, period, amount)`` tuples."""
    segment_expr = source.segments.get(filters.segment)
    rows = (
        source.queryset.annotate(
            kpi_bucket=_trunc(source.time_field, filters),
            kpi_period=_period(source.time_field, filters),
            kpi_segment=segment_expr if segment_expr is not None else Value(NO_SEGMENT),
        )
        .order_by()
        .values("kpi_bucket", "kpi_period", "kpi_segment", "kpi_currency")
        .annotate(**source.sums)
    )
    by_brief = filters.segment == "keyword"
    result = []
    for row in rows:
        labels = [row["kpi_segment"]]
        if by_brief:
            labels = keywords.get(row["kpi_segment"]) or [NONE_LABEL]
        for label in labels:
            result.append(
                (
                    str(label),
                    row["kpi_currency"] or NONE_LABEL,
                    _bucket_date(row["kpi_bucket"], filters),
                    row["kpi_period"],
                    _number(row["amount"]),
                )
            )
    return result


def _sum_rows(rows, segment, currency, *, bucket=None, period=None) -> Decimal:
    total = Decimal(0)
    for seg, cur, row_bucket, row_period, amount in rows:
        if seg != segment or cur != currency:
            continue
        if bucket is not None and row_bucket != bucket:
            continue
        if period is not None and row_period != period:
            continue
        total += amount
    return total


def _money_points(rows, segment, currency, buckets) -> list[dict]:
    return [
        {
            "bucket": b.isoformat(),
            "value": _money(_sum_rows(rows, segment, currency, bucket=b), currency),
        }
        for b in buckets
    ]


def _money(value: Decimal, currency: str) -> str:
    """Quantise to the currency's minor unit (ISO 4217)."""
    try:
        return str(money.quantize(value, currency))
    except money.MoneyError:
        return format(value.quantize(Decimal("0.001")), "f")
