"""Pipeline throughput: stored events to finished sandbox commands, against raw
inserts of the same rows.

The deliveries are received into the database first, untimed, through
``receive()`` with their real signatures, so each one is stored, deduplicated
and normalised as the endpoint would do it. Then two worker processes (one
per core) take half of the record changes each and run them as the django-q2
task does, ``process_changes_task(ids)``: the pipeline steps, then
``dispatch_due()`` on the shared outbox. The clock stops when the last worker
finds no open command. Each worker is warmed up on its own deliveries first.

The baseline, in this process, writes the same number of rows per event into
copies of the same tables (same columns, indexes and constraints, no foreign
keys), in bulk: the counts come from PostgreSQL's per-table statistics of the
timed run. A small sample is then run in this process with every statement
counted per step, and another under cProfile.

Run: ``python -m bench.pipeline`` (``bench/run`` sets the database up).
"""

import argparse
import multiprocessing
import time
from collections import Counter
from unittest import mock

from bench import common

WRITE_TABLES_SQL = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables
WHERE relname NOT LIKE 'bench_%%'
"""


def receive_deliveries(connector, bodies) -> list[int]:
    """Receive each body as the endpoint does; return the record change ids."""
    from django.utils import timezone
    from django.utils.datastructures import CaseInsensitiveMapping

    from syncflows.connectors import DeliveryRequest
    from syncflows.services.receive import receive

    headers = CaseInsensitiveMapping(common.pipedrive_headers())
    change_ids: list[int] = []
    # The benchmark hands the ids to its own workers instead of the task queue.
    with mock.patch("syncflows.tasks.enqueue_changes", change_ids.extend):
        for body in bodies:
            request = DeliveryRequest(
                method="POST",
                url="http://127.0.0.1/api/v1/inbound/pipedrive/",
                headers=headers,
                body=body,
                received_at=timezone.now(),
            )
            result = receive(connector, request)
            if result.status != "accepted":
                raise RuntimeError(
                    f"A benchmark delivery was {result.status}: {result.error}"
                )
    return change_ids


def open_commands() -> int:
    from syncflows.models import Command

    return Command.objects.filter(state__in=Command.OPEN_STATES).count()


def drain(deadline: float) -> None:
    """Dispatch until no command is open or the deadline (monotonic) passes."""
    from syncflows.services.dispatch import dispatch_due

    while time.monotonic() < deadline and open_commands():
        if not dispatch_due():
            time.sleep(0.01)


def flush_statistics() -> None:
    """Make this backend's table statistics visible now and end its session."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
    connection.close()


def worker(warmup_bodies, bodies, batch, limit, ready, go, results) -> None:
    """Run in a child process: receive its deliveries, warm up, wait for the
    start, process its changes, then dispatch until no command is open."""
    common.configure()
    from syncflows.models import Connector
    from syncflows.tasks import process_changes_task

    connector = Connector.objects.get(slug="pipedrive")
    warmup_ids = receive_deliveries(connector, warmup_bodies)
    for change_id in warmup_ids:
        process_changes_task([change_id])
    # Received after the warm-up: a task fills its batch with any waiting
    # change, so changes received before it would be processed by it.
    ids = receive_deliveries(connector, bodies)
    flush_statistics()
    ready.put(True)
    go.wait(timeout=300)
    deadline = time.monotonic() + limit
    for start in range(0, len(ids), batch):
        if time.monotonic() > deadline:
            break
        process_changes_task(ids[start : start + batch])
    drain(deadline)
    finished = time.time()
    flush_statistics()
    results.put(finished)


def timed_run(warmup_bodies, bodies, batch: int, workers: int, limit: float):
    """Process ``bodies`` on ``workers`` processes; return the elapsed seconds
    and the table statistics from before the start."""
    from django.db import connections

    connections.close_all()
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(
            target=worker,
            args=(
                warmup_bodies[n::workers],
                bodies[n::workers],
                batch,
                limit,
                ready,
                go,
                results,
            ),
        )
        for n in range(workers)
    ]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=300)
        stats_before = table_writes()
        started = time.time()
        go.set()
        finished = [results.get(timeout=limit + 60) for _ in processes]
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    return max(finished) - started, stats_before


def table_writes() -> dict[str, tuple[int, int, int]]:
    """Return rows inserted, updated and deleted per table since statistics began."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(WRITE_TABLES_SQL)
        return {name: (ins, upd, dele) for name, ins, upd, dele in cursor.fetchall()}


def writes_since(before: dict, attempts: int = 20) -> dict[str, tuple[int, int, int]]:
    """Return the rows written per table since ``before``, once statistics settle.

    Ended backends flush their statistics on exit, but the collector may show
    them a moment later, so the figures are read until two reads agree.
    """
    previous = None
    for _ in range(attempts):
        after = table_writes()
        delta = {
            name: tuple(
                a - b for a, b in zip(counts, before.get(name, (0, 0, 0)), strict=True)
            )
            for name, counts in after.items()
        }
        delta = {name: counts for name, counts in delta.items() if any(counts)}
        if delta == previous:
            return delta
        previous = delta
        time.sleep(0.5)
    return previous


def check_outcome(first_id: int, count: int) -> Counter:
    from syncflows.models import Command

    record_ids = [str(first_id + index) for index in range(count)]
    return Counter(
        Command.objects.filter(record__record_id__in=record_ids).values_list(
            "state", flat=True
        )
    )


def run_sample(change_ids) -> None:
    from syncflows.tasks import process_changes_task

    for change_id in change_ids:
        process_changes_task([change_id])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events to process")
    parser.add_argument(
        "--batch", type=int, default=1, help="changes per process_changes_task call"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--sample", type=int, default=100, help="events counted")
    parser.add_argument("--profile", type=int, default=100, help="events profiled")
    parser.add_argument(
        "--limit",
        type=float,
        default=60,
        help="seconds after which the workers stop; the rate counts finished events",
    )
    args = parser.parse_args()
    common.configure()
    from bench import baseline, profiling

    connector = common.load_configuration()
    warmup = 20 * args.workers
    first_id = common.first_deal_id()
    bodies = common.pipedrive_bodies(warmup + args.events, first_id)
    extra = common.pipedrive_bodies(args.sample + args.profile, first_id + len(bodies))
    started = time.perf_counter()
    elapsed, stats_before = timed_run(
        bodies[:warmup], bodies[warmup:], args.batch, args.workers, args.limit
    )
    print(
        f"received {len(bodies)} deliveries and ran the timed part in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    writes = writes_since(stats_before)
    states = check_outcome(first_id + warmup, args.events)
    done = states.get("succeeded", 0)
    rate = done / elapsed
    base_elapsed = baseline.run(writes, done)
    base_rate = done / base_elapsed
    print_throughput(args, elapsed, states, rate, base_elapsed, base_rate)
    print_writes(writes, done)

    counter = profiling.StepCounter()
    with counter.active():
        sample_ids = receive_deliveries(connector, extra[: args.sample])
        run_sample(sample_ids)
    common.heading(
        "SQL statements per event, by step (one process, one change per task)"
    )
    profiling.print_steps(counter, args.sample, "receive + pipeline + dispatch")

    profile_ids = receive_deliveries(connector, extra[args.sample :])
    common.heading(f"cProfile of {args.profile} events, one change per task")
    started = time.perf_counter()
    report = profiling.profile(run_sample, profile_ids, top=25)
    seconds = time.perf_counter() - started
    print(f"{args.profile} events in {seconds:.2f} s under the profiler", flush=True)
    print(report, flush=True)


def print_throughput(args, elapsed, states, rate, base_elapsed, base_rate) -> None:
    from django.conf import settings

    concurrency = getattr(settings, "MESHLINE_DISPATCH_CONCURRENCY", 1)
    common.heading(
        f"pipeline throughput ({args.workers} worker processes, {args.batch} change(s) "
        f"per task, {concurrency} dispatch threads per worker)"
    )
    done = states.get("succeeded", 0)
    stopped = " (stopped at the time limit)" if done < args.events else ""
    print(
        f"pipeline            {rate:8.1f} events/s  ({done} of {args.events} events "
        f"finished in {elapsed:.2f} s{stopped}; command states: {dict(states)})",
        flush=True,
    )
    print(
        f"raw inserts         {base_rate:8.1f} events/s  ({done} events in "
        f"{base_elapsed:.2f} s, one process)",
        flush=True,
    )
    print(f"ratio pipeline/raw  {rate / base_rate:.3f}  (target: 500 events/s)")


def print_writes(writes, events: int) -> None:
    print("rows written per event in the timed run (insert / update / delete):")
    for name, counts in sorted(writes.items()):
        ins, upd, dele = (count / events for count in counts)
        print(f"  {name:<36} {ins:5.2f} {upd:5.2f} {dele:5.2f}", flush=True)


if __name__ == "__main__":
    main()
