"""Reconciliation of 100,000 sandbox orders: wall time and peak memory.

Builds the orders and their succeeded commands on a fresh PostgreSQL
database (one order in 100 with a changed invoice total), then runs one
reconciliation in a child process and reports its wall time and peak RSS
(the child's ``VmHWM``, so the set-up does not count).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/meshline_bench_reconcile \\
        .venv/bin/python bench/reconcile.py [--orders 100000]

Targets: under 60 s and under 300 MB.
"""

import argparse
import os
import resource
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path, where bench/queue.py
# would shadow the standard library's queue module.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))
os.environ.setdefault(
    "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/meshline_bench_reconcile"
)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshline.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-not-for-production")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# Production runs with DEBUG off. With it on, Django also keeps the last
# 9,000 SQL statements in memory: a peak of 123 MB against 99 MB here.
os.environ.setdefault("DEBUG", "0")
# Cases are opened by the exceptions app; the run itself is inline.
os.environ.setdefault("MESHLINE_SYNC_PIPELINE", "1")

BATCH = 5000


def prepare(count: int) -> None:
    from bench.dashboard import build_syncs, setup_database

    setup_database()
    from syncflows.models import Command, SandboxCustomer, SandboxOrder

    ids = build_syncs(count, with_ledger=False)
    destination = Command.objects.get(pk=ids[0]).destination
    customer, _ = SandboxCustomer.objects.get_or_create(
        destination=destination, reference="bench", defaults={"name": "Bench customer"}
    )
    for offset in range(0, len(ids), BATCH):
        chunk = list(
            Command.objects.filter(pk__in=ids[offset : offset + BATCH]).only(
                "pk", "payload", "idempotency_key"
            )
        )
        orders = SandboxOrder.objects.bulk_create(
            SandboxOrder(
                destination=destination,
                number=f"SO-B{c.pk}",
                idempotency_key=c.idempotency_key,
                crm_reference="",
                customer=customer,
                currency="EUR",
                total=Decimal(c.payload["total"]),
                lines=[],
                invoice_number=f"INV-B{c.pk}",
                invoice_total=Decimal(c.payload["total"])
                + (1 if c.pk % 100 == 0 else 0),
            )
            for c in chunk
        )
        for command, order in zip(chunk, orders, strict=True):
            command.erp_reference = f"sandbox.order:{order.pk}"
            command.erp_document_number = order.number
        Command.objects.bulk_update(chunk, ["erp_reference", "erp_document_number"])
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def run_once() -> None:
    import datetime

    import django

    django.setup()
    from bench.dashboard import DAYS, START
    from reporting.services.reconciliation import execute_run, start_run

    began = time.perf_counter()
    run = start_run(START, START + datetime.timedelta(days=DAYS + 1))
    run = execute_run(run.pk)
    seconds = time.perf_counter() - began
    peak_mb = peak_rss_mb()
    print(
        f"reconciled {run.processed:,} orders in {seconds:.1f} s "
        f"({run.matched:,} matched, {run.mismatched:,} mismatched, "
        f"{run.missing:,} missing, "
        f"{run.orphaned:,} ERP only); peak RSS {peak_mb:.0f} MB"
    )


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MB.

    On Linux, ``ru_maxrss`` keeps the parent's peak across fork and exec, so
    the child would report the 280 MB that building the orders took. The
    ``VmHWM`` line of /proc/self/status belongs to the process's own memory.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000, help="Orders to create.")
    parser.add_argument(
        "--run-only", action="store_true", help="Only run the reconciliation."
    )
    args = parser.parse_args()
    if args.run_only:
        run_once()
        return
    began = time.perf_counter()
    prepare(args.orders)
    print(f"built {args.orders:,} orders in {time.perf_counter() - began:.0f} s")
    subprocess.run(
        [sys.executable, __file__, "--run-only"], check=True, env=os.environ.copy()
    )


if __name__ == "__main__":
    main()
