"""Dashboard server time over 1,000,000 ledger rows.

Builds 100,000 syncs (records, events, changes, runs, commands) with ten
ledger rows each, 10,000 exception cases and 50,000 invoice snapshots on a
fresh PostgreSQL database. The cases are bulk-loaded without their ledger
rows, so the script then rebuilds the KPI summary. It times the dashboard
view in-process (Django's test client, so server time only) and counts its
queries. It checks that the summary gives the same figures as the live
queries and times those. Last, it times one request after 1,000 new syncs,
which that request folds into the summary.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/meshline_bench_reporting \\
        .venv/bin/python bench/dashboard.py [--syncs 100000]

Target: under 500 ms, with the same query count at any size.
"""

import argparse
import datetime
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

# Run as a script, Python puts bench/ first on the path, where bench/queue.py
# would shadow the standard library's queue module.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault(
    "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/meshline_bench_reporting"
)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshline.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-not-for-production")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# DEBUG serves static files without collectstatic; no HTTPS redirect in-process.
os.environ.setdefault("DEBUG", "1")

BATCH = 5000
LEDGER_PER_SYNC = 10
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAYS = 90


def setup_database() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def build_syncs(count: int, *, with_ledger=True) -> list[int]:
    """Create ``count`` succeeded syncs spread over DAYS days; return command ids."""
    from syncflows.models import (
        Brief,
        BriefVersion,
        Command,
        Connector,
        Delivery,
        Destination,
        InboundEvent,
        RecordChange,
        SourceRecord,
        SyncRun,
    )

    connector, _ = Connector.objects.get_or_create(
        slug="bench-crm",
        defaults={"name": "Bench CRM", "kind": "generic", "business_unit": "emea"},
    )
    destination, _ = Destination.objects.get_or_create(
        slug="sandbox", defaults={"name": "Sandbox ERP", "adapter": "sandbox"}
    )
    versions = []
    for slug, keywords in (("bench-a", ["discounts"]), ("bench-b", ["CPQ"])):
        brief, _ = Brief.objects.get_or_create(
            slug=slug, defaults={"name": slug, "intent": "bench", "keywords": keywords}
        )
        version, _ = BriefVersion.objects.get_or_create(
            brief=brief,
            number=1,
            defaults={"state": "active", "mapping": {}, "command_schema": {}},
        )
        versions.append(version)
    first = SourceRecord.objects.count()
    command_ids = []
    for offset in range(0, count, BATCH):
        size = min(BATCH, count - offset)
        ids = range(first + offset, first + offset + size)
        when = [
            START + datetime.timedelta(seconds=(i * 77) % (DAYS * 86400)) for i in ids
        ]
        records = SourceRecord.objects.bulk_create(
            SourceRecord(
                connector=connector,
                object_type="deal",
                record_id=str(i),
                record_key=f"bench-crm:deal:{i}",
                business_unit=("emea", "apac")[i % 2],
            )
            for i in ids
        )
        deliveries = Delivery.objects.bulk_create(
            Delivery(
                connector=connector,
                received_at=w,
                source="webhook",
                status="accepted",
                content_hash=str(i),
                body=b"{}",
                size=2,
            )
            for i, w in zip(ids, when, strict=True)
        )
        events = InboundEvent.objects.bulk_create(
            InboundEvent(
                delivery=d,
                connector=connector,
                position=0,
                dedupe_key=str(i),
                object_type="deal",
                record_id=str(i),
                occurred_at=w,
                payload={},
                received_at=w,
            )
            for i, d, w in zip(ids, deliveries, when, strict=True)
        )
        changes = RecordChange.objects.bulk_create(
            RecordChange(
                record=r,
                event=e,
                change_type="update",
                revision=1,
                occurred_at=w,
                state={},
                previous={},
                status="matched",
            )
            for r, e, w in zip(records, events, when, strict=True)
        )
        commands = Command.objects.bulk_create(
            Command(
                idempotency_key=f"bench-{i}",
                command_type="sales_order.create",
                brief_version=versions[i % 2],
                record=r,
                destination=destination,
                payload={
                    "crm_amount": f"{100 + i % 900}.00",
                    "total": f"{100 + i % 900}.00",
                    "currency": "EUR",
                    "close_date": w.date().isoformat(),
                },
                payload_hash="x",
                ordering_key=r.record_key,
                state="succeeded",
                next_attempt_at=w,
                finished_at=w,
                created_at=w,
            )
            for i, r, w in zip(ids, records, when, strict=True)
        )
        runs = SyncRun.objects.bulk_create(
            SyncRun(
                brief_version=versions[i % 2],
                change=ch,
                record=r,
                state="queued",
                command=c,
            )
            for i, ch, r, c in zip(ids, changes, records, commands, strict=True)
        )
        _backdate(runs, commands, when)
        command_ids.extend(c.pk for c in commands)
        if with_ledger:
            _ledger(runs, commands, records, when)
    return command_ids


def _backdate(runs, commands, when) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.executemany(
            "UPDATE syncflows_syncrun SET created_at = %s WHERE id = %s",
            [(w, r.pk) for r, w in zip(runs, when, strict=True)],
        )
        cursor.executemany(
            "UPDATE syncflows_command SET created_at = %s WHERE id = %s",
            [(w, c.pk) for c, w in zip(commands, when, strict=True)],
        )


def _ledger(runs, commands, records, when) -> None:
    from syncflows.models import LedgerEntry

    steps = [
        "receive",
        "normalise",
        "match",
        "transform",
        "validate",
        "route",
        "enqueue",
        "claim",
        "preflight",
        "execute",
    ]
    rows = [
        LedgerEntry(
            step=steps[n],
            message="bench",
            record_key=rec.record_key,
            run=run,
            command=cmd if n >= 6 else None,
            created_at=w,
        )
        for run, cmd, rec, w in zip(runs, commands, records, when, strict=True)
        for n in range(LEDGER_PER_SYNC)
    ]
    LedgerEntry.objects.bulk_create(rows, batch_size=BATCH)


def build_cases_and_snapshots(command_ids) -> None:
    from django.contrib.auth.models import Group

    from exceptions.models import ExceptionCase, Lane
    from reporting.models import ErpInvoiceSnapshot
    from reporting.services.summary import store_snapshots
    from syncflows.models import Command

    group, _ = Group.objects.get_or_create(name="Finance")
    lane, _ = Lane.objects.get_or_create(
        slug="bench", defaults={"name": "Bench", "owner_group": group}
    )
    hour = datetime.timedelta(hours=1)
    for offset in range(0, len(command_ids), BATCH):
        chunk = list(
            Command.objects.filter(
                pk__in=command_ids[offset : offset + BATCH]
            ).select_related("brief_version", "record")
        )
        cases = [
            ExceptionCase(
                reason_code="erp_rejected",
                title="t",
                message="m",
                lane=lane,
                owner_group=group,
                record_key=c.record.record_key,
                command=c,
                keyword="discounts",
                opened_at=c.finished_at,
                due_at=c.finished_at + 24 * hour,
                acknowledged_at=c.finished_at + hour,
                closed_at=c.finished_at + 5 * hour,
                state="resolved",
            )
            for c in chunk[::10]
        ]
        ExceptionCase.objects.bulk_create(cases)
        snapshots = [
            ErpInvoiceSnapshot(
                command=c,
                destination_id=c.destination_id,
                brief_id=c.brief_version.brief_id,
                business_unit=c.record.business_unit,
                synced_at=c.finished_at,
                crm_close_date=c.finished_at.date(),
                crm_amount=Decimal(c.payload["total"]),
                crm_currency="EUR",
                invoice_state="paid",
                invoice_currency="EUR",
                invoice_total=Decimal(c.payload["total"]),
                credited_total=Decimal(0) if c.pk % 7 else Decimal("10.00"),
                paid_on=c.finished_at.date() + datetime.timedelta(days=c.pk % 40),
                fetched_at=c.finished_at,
            )
            for c in chunk[::2]
        ]
        store_snapshots(snapshots)


URL = (
    "/reporting/?start=2026-01-01&end=2026-03-31&tz=Europe/Helsinki"
    "&segment=keyword&pilot=2026-02-15"
)


def dashboard_client():
    from django.contrib.auth.models import User
    from django.test import Client

    user, _ = User.objects.get_or_create(
        username="bench-viewer", defaults={"is_superuser": True}
    )
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    return client


def time_dashboard(client, repeats: int = 7) -> tuple[list[float], int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(URL)  # warm caches and the connection
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        response = client.get(URL)
        timings.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.status_code
    with CaptureQueriesContext(connection) as queries:
        client.get(URL)
    return timings, len(queries)


def time_live(repeats: int = 3) -> list[float]:
    """Time the KPIs computed without the summary; check they are the same."""
    import zoneinfo

    from reporting.services.kpis import Filters, compute

    filters = Filters(
        start=datetime.date(2026, 1, 1),
        end=datetime.date(2026, 3, 31),
        tz=zoneinfo.ZoneInfo("Europe/Helsinki"),
        segment="keyword",
        pilot=datetime.date(2026, 2, 15),
    )
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        live = compute(filters, live=True)
        timings.append((time.perf_counter() - began) * 1000)
    assert compute(filters) == live, "the summary and the live queries differ"
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--syncs",
        type=int,
        default=100_000,
        help="Syncs to create (ten ledger rows each).",
    )
    args = parser.parse_args()
    setup_database()
    from django.db import connection

    from reporting.services import summary
    from syncflows.models import LedgerEntry

    began = time.perf_counter()
    ids = build_syncs(args.syncs)
    build_cases_and_snapshots(ids)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(
        f"built {LedgerEntry.objects.count():,} ledger rows "
        f"in {time.perf_counter() - began:.0f} s"
    )
    began = time.perf_counter()
    summary.rebuild()
    print(f"rebuilt the KPI summary in {time.perf_counter() - began:.0f} s")
    client = dashboard_client()
    timings, queries = time_dashboard(client)
    print(
        f"dashboard server time over {len(timings)} requests: "
        f"median {statistics.median(timings):.0f} ms, "
        f"max {max(timings):.0f} ms; {queries} queries per request"
    )
    live = time_live()
    print(
        f"the same KPIs without the summary over {len(live)} runs: "
        f"median {statistics.median(live):.0f} ms (same figures)"
    )
    build_syncs(1000)
    began = time.perf_counter()
    client.get(URL)
    print(
        "one request after 1,000 new syncs (10,000 ledger rows), "
        f"fold included: {(time.perf_counter() - began) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
