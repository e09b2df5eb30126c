"""The sources of the KPIs: one queryset per table, with its sums.

Definitions:

- A sync is a sync run that queued a command or failed before dispatch.
  It succeeded without human intervention when its command succeeded, no
  exception case names the run or the command, and no person took an action
  on the command (a ledger "action" row with an actor).
- Exception rate: syncs with at least one exception case, over all syncs.
- Time to triage runs from opening to acknowledgement, and time to resolve
  from opening to resolution. SLA compliance is the cases closed by their
  due time, over the cases closed plus the open cases already past due.
  Cases count in the bucket in which they were opened.
- Days to cash: CRM close date to ERP payment date, for synced orders paid
  in the bucket. Invoice accuracy: synced invoices without a credit note,
  over synced invoices. Both read the snapshots that reconciliation stores.
- Revenue expected: the CRM amount of every live command (not superseded or
  compensated) created in the bucket; revenue invoiced: posted or paid
  invoice totals less credit notes, for orders synced in the bucket. Both
  are per currency, because amounts in different currencies do not add up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db.models import (
    CharField,
    Count,
    DecimalField,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Sum,
    Value,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, NullIf
from django.utils import timezone

from exceptions.models import ExceptionCase
from reporting.models import (
    CashSummary,
    ErpInvoiceSnapshot,
    InvoiceSummary,
    RevenueSummary,
    SyncSummary,
)
from syncflows.models import Command, LedgerEntry, SyncRun

if TYPE_CHECKING:
    from reporting.services.kpis import Filters

NONE_LABEL = "(none)"
SECONDS_PER_DAY = 86400
AMOUNT = DecimalField(max_digits=20, decimal_places=3)


def _text(expression):
    return Coalesce(
        NullIf(expression, Value("")), Value(NONE_LABEL), output_field=CharField()
    )


@dataclass
class Source:
    """One table to aggregate: its time field and how it is segmented."""

    queryset: object
    time_field: str
    segments: dict  # segment name -> expression; "keyword" may be "brief"
    sums: dict
    is_date: bool = False


def _seconds_between(later: str, earlier: str):
    return ExpressionWrapper(F(later) - F(earlier), output_field=DurationField())


# The sources.


def _with_unit_and_destination(queryset, filters: Filters, destination_path: str):
    """Annotate the business unit and destination only when a query needs them.

    Each costs joins on every row, and an annotation is computed whether or
    not the grouping uses it.
    """
    if filters.segment == "business_unit" or filters.business_unit:
        unit = Coalesce(
            NullIf("record__business_unit", Value("")),
            "record__connector__business_unit",
        )
        queryset = queryset.annotate(kpi_bu=_text(unit))
    if filters.segment == "destination" or filters.destination:
        destination = Coalesce(destination_path, Value(""))
        queryset = queryset.annotate(kpi_destination=_text(destination))
    return queryset


def counted_runs():
    """Return the sync runs that count as syncs, with the flags of each."""
    has_case = Exists(ExceptionCase.objects.filter(run=OuterRef("pk"))) | Exists(
        ExceptionCase.objects.filter(command=OuterRef("command_id"))
    )
    human_action = Exists(
        LedgerEntry.objects.filter(
            command=OuterRef("command_id"),
            step=LedgerEntry.Step.ACTION,
            actor__isnull=False,
        )
    )
    return SyncRun.objects.filter(
        state__in=[SyncRun.State.QUEUED, SyncRun.State.FAILED]
    ).annotate(kpi_has_case=has_case, kpi_human=human_action)


# A clean sync: succeeded without human intervention. Needs counted_runs().
CLEAN_RUN = Q(state=SyncRun.State.QUEUED, command__state=Command.State.SUCCEEDED) & Q(
    kpi_has_case=False, kpi_human=False
)


def sync_source(filters: Filters, brief_ids) -> Source:
    runs = counted_runs().filter(
        created_at__gte=filters.start_at(), created_at__lt=filters.end_at()
    )
    runs = _with_unit_and_destination(runs, filters, "command__destination__slug")
    runs = _filter_common(runs, filters, brief_ids, "brief_version__brief_id")
    return Source(
        runs,
        "created_at",
        {
            "keyword": F("brief_version__brief_id"),
            "keyword_by_brief": True,
            "business_unit": F("kpi_bu"),
            "destination": F("kpi_destination"),
        },
        {
            "syncs": Count("id"),
            "clean": Count("id", filter=CLEAN_RUN),
            "excepted": Count("id", filter=Q(kpi_has_case=True)),
        },
    )


def case_source(filters: Filters, brief_ids) -> Source:
    now = timezone.now()
    cases = ExceptionCase.objects.filter(
        opened_at__gte=filters.start_at(), opened_at__lt=filters.end_at()
    ).annotate(
        kpi_bu=_text(F("business_unit")),
        kpi_destination=_text(Coalesce("destination__slug", Value(""))),
        kpi_keyword=_text(F("keyword")),
    )
    if filters.keyword:
        cases = cases.filter(keyword=filters.keyword)
    if filters.business_unit:
        cases = cases.filter(kpi_bu=filters.business_unit)
    if filters.destination:
        cases = cases.filter(kpi_destination=filters.destination)
    closed = Q(state__in=[ExceptionCase.State.RESOLVED, ExceptionCase.State.DISMISSED])
    met = closed & Q(closed_at__lte=F("due_at"))
    late = (closed & Q(closed_at__gt=F("due_at"))) | (~closed & Q(due_at__lt=now))
    resolved = Q(state=ExceptionCase.State.RESOLVED, closed_at__isnull=False)
    return Source(
        cases,
        "opened_at",
        {
            "keyword": F("kpi_keyword"),
            "business_unit": F("kpi_bu"),
            "destination": F("kpi_destination"),
        },
        {
            "triaged": Count("id", filter=Q(acknowledged_at__isnull=False)),
            "triage_seconds": Sum(
                _seconds_between("acknowledged_at", "opened_at"),
                filter=Q(acknowledged_at__isnull=False),
            ),
            "resolved": Count("id", filter=resolved),
            "resolve_seconds": Sum(
                _seconds_between("closed_at", "opened_at"), filter=resolved
            ),
            "sla_met": Count("id", filter=met),
            "sla_due": Count("id", filter=met | late),
        },
    )


def _snapshot_segments():
    return {
        "keyword": F("brief_id"),
        "keyword_by_brief": True,
        "business_unit": F("kpi_bu"),
        "destination": F("destination__slug"),
    }


def _snapshots(filters: Filters, brief_ids):
    snapshots = ErpInvoiceSnapshot.objects.annotate(kpi_bu=_text(F("business_unit")))
    return _filter_common(snapshots, filters, brief_ids, "brief_id", bu="kpi_bu")


def cash_source(filters: Filters, brief_ids) -> Source:
    snapshots = _snapshots(filters, brief_ids).filter(
        paid_on__gte=filters.start,
        paid_on__lte=filters.end,
        crm_close_date__isnull=False,
    )
    return Source(
        snapshots,
        "paid_on",
        _snapshot_segments(),
        {
            "paid": Count("id"),
            "cash_seconds": Sum(_seconds_between("paid_on", "crm_close_date")),
        },
        is_date=True,
    )


def accuracy_source(filters: Filters, brief_ids) -> Source:
    snapshots = _snapshots(filters, brief_ids).filter(
        synced_at__gte=filters.start_at(), synced_at__lt=filters.end_at()
    )
    return Source(
        snapshots,
        "synced_at",
        _snapshot_segments(),
        {"invoices": Count("id"), "accurate": Count("id", filter=Q(credited_total=0))},
    )


def _filter_common(
    queryset, filters, brief_ids, brief_field, bu="kpi_bu", destination=None
):
    if brief_ids is not None:
        queryset = queryset.filter(**{f"{brief_field}__in": brief_ids})
    if filters.business_unit:
        queryset = queryset.filter(**{bu: filters.business_unit})
    if filters.destination:
        field_name = destination or (
            "destination__slug" if brief_field == "brief_id" else "kpi_destination"
        )
        queryset = queryset.filter(**{field_name: filters.destination})
    return queryset


def counted_commands():
    """Return the commands that count as expected revenue, with their amount."""
    return (
        Command.objects.filter(mode=Command.Mode.LIVE)
        .exclude(state__in=[Command.State.SUPERSEDED, Command.State.COMPENSATED])
        .annotate(
            kpi_currency=KT("payload__currency"),
            kpi_amount=Cast(
                Coalesce(KT("payload__crm_amount"), KT("payload__total")),
                output_field=AMOUNT,
            ),
        )
    )


def expected_source(filters, brief_ids) -> Source:
    commands = counted_commands().filter(
        created_at__gte=filters.start_at(), created_at__lt=filters.end_at()
    )
    commands = _with_unit_and_destination(commands, filters, "destination__slug")
    commands = _filter_common(commands, filters, brief_ids, "brief_version__brief_id")
    return Source(
        commands,
        "created_at",
        {
            "keyword": F("brief_version__brief_id"),
            "keyword_by_brief": True,
            "business_unit": F("kpi_bu"),
            "destination": F("kpi_destination"),
        },
        {"amount": Sum("kpi_amount")},
    )


def invoiced_source(filters, brief_ids) -> Source:
    snapshots = (
        _snapshots(filters, brief_ids)
        .filter(
            synced_at__gte=filters.start_at(),
            synced_at__lt=filters.end_at(),
            invoice_state__in=["posted", "paid"],
        )
        .annotate(kpi_currency=F("invoice_currency"))
    )
    return Source(
        snapshots,
        "synced_at",
        _snapshot_segments(),
        {"amount": Sum(F("invoice_total") - F("credited_total"), output_field=AMOUNT)},
    )


# The same sources, read from the summary tables that
# reporting.services.summary keeps.


def _with_summary_unit_and_destination(queryset, filters: Filters):
    if filters.segment == "business_unit" or filters.business_unit:
        unit = Coalesce(NullIf("business_unit", Value("")), "connector__business_unit")
        queryset = queryset.annotate(kpi_bu=_text(unit))
    if filters.segment == "destination" or filters.destination:
        destination = Coalesce("destination__slug", Value(""))
        queryset = queryset.annotate(kpi_destination=_text(destination))
    return queryset


def _summary_rows(model, filters: Filters, brief_ids):
    rows = model.objects.filter(slot__gte=filters.start_at(), slot__lt=filters.end_at())
    rows = _with_summary_unit_and_destination(rows, filters)
    return _filter_common(
        rows, filters, brief_ids, "brief_id", destination="kpi_destination"
    )


def _summary_segments() -> dict:
    return {
        "keyword": F("brief_id"),
        "keyword_by_brief": True,
        "business_unit": F("kpi_bu"),
        "destination": F("kpi_destination"),
    }


def sync_summary_source(filters: Filters, brief_ids) -> Source:
    """Return the rows of ``sync_source``, summed per slot."""
    return Source(
        _summary_rows(SyncSummary, filters, brief_ids),
        "slot",
        _summary_segments(),
        {"syncs": Sum("syncs"), "clean": Sum("clean"), "excepted": Sum("excepted")},
    )


def expected_summary_source(filters: Filters, brief_ids) -> Source:
    """Return the rows of ``expected_source``, summed per slot and currency."""
    rows = _summary_rows(RevenueSummary, filters, brief_ids).annotate(
        kpi_currency=F("currency")
    )
    return Source(rows, "slot", _summary_segments(), {"amount": Sum("amount")})


def _invoice_summary_rows(filters: Filters, brief_ids):
    rows = InvoiceSummary.objects.filter(
        slot__gte=filters.start_at(), slot__lt=filters.end_at()
    ).annotate(kpi_bu=_text(F("business_unit")))
    return _filter_common(rows, filters, brief_ids, "brief_id")


def accuracy_summary_source(filters: Filters, brief_ids) -> Source:
    """Return the rows of ``accuracy_source``, summed per slot."""
    return Source(
        _invoice_summary_rows(filters, brief_ids),
        "slot",
        _snapshot_segments(),
        {"invoices": Sum("invoices"), "accurate": Sum("accurate")},
    )


def invoiced_summary_source(filters: Filters, brief_ids) -> Source:
    """Return the rows of ``invoiced_source``, summed per slot and currency."""
    rows = (
        _invoice_summary_rows(filters, brief_ids)
        .filter(billed__gt=0)
        .annotate(kpi_currency=F("currency"))
    )
    return Source(rows, "slot", _snapshot_segments(), {"amount": Sum("billed_amount")})


def cash_summary_source(filters: Filters, brief_ids) -> Source:
    """Return the rows of ``cash_source``, summed per payment date."""
    rows = CashSummary.objects.filter(
        paid_on__gte=filters.start, paid_on__lte=filters.end
    ).annotate(kpi_bu=_text(F("business_unit")))
    return Source(
        _filter_common(rows, filters, brief_ids, "brief_id"),
        "paid_on",
        _snapshot_segments(),
        {"paid": Sum("paid"), "cash_seconds": Sum("cash_days") * SECONDS_PER_DAY},
        is_date=True,
    )
