"""Queue page server time at 100,000 exception cases.

Fills the database up to ``--cases`` cases (100,000 by default) across the
demo lanes, then times, in this one process, Django's test client fetching
the queue pages through the whole middleware stack, against a baseline: a
bare SELECT of one page of cases (50 rows) on the same connection. Prints
the median and p95 of each in milliseconds.

Run: ``python -m bench.queue`` with DATABASE_URL naming a migrated database.
"""

import argparse
import random
import time
from datetime import timedelta

from bench import common

BASELINE_SQL = (
    "SELECT id, title, reason_code, state, record_key, lane_id, owner_user_id, "
    "owner_group_id, opened_at, due_at FROM exceptions_exceptioncase "
    "ORDER BY due_at, id LIMIT 50"
)
REASONS = [
    "mapping_missing",
    "master_data_missing",
    "acceptance_failed",
    "erp_rejected",
    "drift_blocked",
]
STATES = ["open", "open", "assigned", "acknowledged", "resolved", "dismissed"]


def fill(target: int) -> int:
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.utils import timezone

    from exceptions.demo import load_demo_lanes
    from exceptions.models import ExceptionCase

    lanes = list(load_demo_lanes().values())
    have = ExceptionCase.objects.count()
    rng = random.Random(11)
    now = timezone.now()
    batch = []
    for index in range(have, target):
        lane = lanes[index % len(lanes)]
        opened = now - timedelta(minutes=rng.randint(0, 60 * 24 * 30))
        batch.append(
            ExceptionCase(
                reason_code=rng.choice(REASONS),
                title="Synthetic benchmark case",
                message="Benchmark row.",
                lane=lane,
                owner_group=lane.owner_group,
                state=rng.choice(STATES),
                record_key=f"bench:deal:{index}",
                opened_at=opened,
                due_at=opened + timedelta(hours=rng.randint(1, 72)),
            )
        )
        if len(batch) == 5000:
            ExceptionCase.objects.bulk_create(batch)
            batch = []
    ExceptionCase.objects.bulk_create(batch)
    Group.objects.get_or_create(name="Finance")
    with connection.cursor() as cursor:
        # Fresh statistics, as autovacuum would gather after a bulk load.
        cursor.execute("ANALYZE exceptions_exceptioncase")
    return ExceptionCase.objects.count()


def timed(function, repeat: int) -> list[float]:
    function()  # warm caches and connections
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return times


def report(name: str, times: list[float]) -> None:
    p50, p95 = common.percentile(times, 0.5), common.percentile(times, 0.95)
    print(f"{name:<40} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    options = parser.parse_args()
    common.configure()

    from django.contrib.auth.models import Group, User
    from django.db import connection
    from django.test import Client

    common.heading(f"Queue page at {fill(options.cases):,} cases")
    user, _ = User.objects.get_or_create(username="bench-finance")
    user.groups.add(Group.objects.get(name="Finance"))
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)

    def baseline():
        with connection.cursor() as cursor:
            cursor.execute(BASELINE_SQL)
            cursor.fetchall()

    def page(url, **headers):
        def get():
            response = client.get(url, **headers)
            assert response.status_code == 200, (url, response.status_code)

        return get

    report("baseline: bare SELECT of 50 cases", timed(baseline, options.repeat))
    report("/exceptions/ (all cases)", timed(page("/exceptions/"), options.repeat))
    report(
        "/exceptions/?state=open&sla=breached",
        timed(page("/exceptions/?state=open&sla=breached"), options.repeat),
    )
    report(
        "/exceptions/lanes/master-data/",
        timed(page("/exceptions/lanes/master-data/"), options.repeat),
    )
    report("/exceptions/mine/", timed(page("/exceptions/mine/"), options.repeat))
    report(
        "/exceptions/ table partial (HTMX)",
        timed(page("/exceptions/", HTTP_HX_REQUEST="true"), options.repeat),
    )


if __name__ == "__main__":
    main()
