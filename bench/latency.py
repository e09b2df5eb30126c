"""Latency from ingest to finished command, at a steady load over HTTP.

One gunicorn (2 workers) serves the inbound endpoint and one django-q2
cluster (``Q_WORKERS`` workers, 2 by default) runs the pipeline, on the ORM
broker or on Redis. Signed Pipedrive deliveries, each a distinct deal, are
sent on a fixed schedule. The latency of a delivery is its ``received_at``
(set by the endpoint when the body has been read) to its command's
``finished_at`` (set when the sandbox order is committed), as the ledger
records them. The ORM broker's poll interval, ``Q_CLUSTER["poll"]``, adds up
to one interval to each task's wait.

Run: ``python -m bench.latency`` (``bench/run`` sets the database up).
"""

import argparse
import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass

import requests

from bench import common

QUANTILES = (0.5, 0.9, 0.99)
# How long to wait after the last delivery for the commands to finish.
DRAIN_SECONDS = 30


@dataclass
class Sent:
    deal_id: int
    sent_at: float  # wall clock, seconds
    status: int
    response_seconds: float
    late_seconds: float


def set_aside_unprocessed() -> int:
    """Keep earlier benchmarks' unprocessed work away from this cluster.

    The ingest benchmark leaves its deliveries stored and queued, not yet
    normalised. Without this, the cluster would run their tasks and the
    minute sweep would normalise them during the measurement. So the
    broker's queue is purged, the deliveries are marked quarantined and
    their changes failed, in the benchmark database only.
    """
    from django_q.brokers import get_broker

    from syncflows.models import Delivery, RecordChange

    get_broker().purge_queue()
    deliveries = Delivery.objects.filter(status=Delivery.Status.RECEIVED).update(
        status=Delivery.Status.QUARANTINED, error="Set aside by the latency benchmark."
    )
    changes = RecordChange.objects.filter(status=RecordChange.Status.APPLIED).update(
        status=RecordChange.Status.FAILED
    )
    return deliveries + changes


def send_steady(url, bodies, first_id, rate, threads, headers) -> list[Sent]:
    """Post body ``i`` at ``start + i / rate`` from ``threads`` threads."""
    sent: list[Sent] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.2

    def work(offset: int):
        with requests.Session() as session:
            for index in range(offset, len(bodies), threads):
                due = start + index / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                late = max(0.0, time.monotonic() - due)
                wall, began = time.time(), time.perf_counter()
                response = session.post(
                    url, data=bodies[index], headers=headers, timeout=30
                )
                elapsed = time.perf_counter() - began
                with lock:
                    sent.append(
                        Sent(
                            first_id + index, wall, response.status_code, elapsed, late
                        )
                    )

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sent


def wait_finished(deal_ids: list[int], timeout: float) -> int:
    """Wait until every deal's command is finished; return how many are."""
    from syncflows.models import Command

    record_ids = [str(deal_id) for deal_id in deal_ids]
    deadline = time.monotonic() + timeout
    while True:
        done = Command.objects.filter(
            record__record_id__in=record_ids, finished_at__isnull=False
        ).count()
        if done >= len(record_ids) or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def measured(deal_ids: list[int]) -> dict[str, tuple]:
    """Return record id: (received_at, finished_at, command state)."""
    from syncflows.models import SyncRun

    rows = SyncRun.objects.filter(
        record__record_id__in=[str(deal_id) for deal_id in deal_ids],
        record__connector__slug="pipedrive",
        command__isnull=False,
    ).values_list(
        "record__record_id",
        "change__event__received_at",
        "command__finished_at",
        "command__state",
    )
    return {
        record_id: (received, finished, state)
        for record_id, received, finished, state in rows
    }


def describe(name: str, seconds: list[float]) -> str:
    """Summarise latencies; an unfinished delivery counts as infinitely late."""

    def show(value: float) -> str:
        return "unfinished" if math.isinf(value) else f"{1000 * value:.0f} ms"

    if not seconds:
        return f"{name}: no values"
    parts = [
        f"p{int(100 * q)} {show(common.percentile(seconds, q))}" for q in QUANTILES
    ]
    unfinished = sum(1 for value in seconds if math.isinf(value))
    return (
        f"{name}: {', '.join(parts)}, max {show(max(seconds))} (n={len(seconds)}, "
        + (f"{unfinished} unfinished)")
    )


def run(rate: float, duration: float, threads: int) -> dict:
    from django.conf import settings

    common.load_configuration()
    set_aside = set_aside_unprocessed()
    headers = common.pipedrive_headers()
    count = int(rate * duration)
    warmup = 10
    first_id = common.first_deal_id()
    bodies = common.pipedrive_bodies(warmup + count, first_id)
    broker = "redis" if "redis" in settings.Q_CLUSTER else "orm"

    with common.gunicorn(workers=2, threads=threads) as base_url, common.qcluster():
        url = base_url + "/api/v1/inbound/pipedrive/"
        send_steady(url, bodies[:warmup], first_id, 5, 2, headers)
        warm = wait_finished(list(range(first_id, first_id + warmup)), timeout=60)
        if warm < warmup:
            raise RuntimeError(
                f"Only {warm} of {warmup} warm-up commands finished in 60 s"
            )
        sent = send_steady(
            url, bodies[warmup:], first_id + warmup, rate, threads, headers
        )
        deal_ids = [item.deal_id for item in sent]
        finished = wait_finished(deal_ids, timeout=DRAIN_SECONDS)
        rows = measured(deal_ids)

    poll = settings.Q_CLUSTER.get("poll")
    common.heading(
        f"latency at {rate:g} deliveries/s for {duration:g} s "
        f"({broker} broker, poll {poll} s, "
        f"{settings.Q_CLUSTER['workers']} cluster workers)"
    )
    if set_aside:
        print(
            f"set aside {set_aside} unprocessed changes of earlier benchmarks",
            flush=True,
        )
    statuses = {item.status for item in sent}
    late = [item.late_seconds for item in sent]
    print(
        f"sent {len(sent)} deliveries (HTTP statuses {sorted(statuses)}); "
        f"{finished} commands finished; send schedule late by up to {max(late):.3f} s",
        flush=True,
    )
    states = Counter(state for _, _, state in rows.values())
    print(f"command states: {dict(states)}", flush=True)
    sent_at = {str(item.deal_id): item.sent_at for item in sent}
    server, client = [], []
    for record_id, wall in sent_at.items():
        received, done, _ = rows.get(record_id, (None, None, None))
        if done is None:
            server.append(math.inf)
            client.append(math.inf)
            continue
        server.append((done - received).total_seconds())
        client.append(done.timestamp() - wall)
    print(describe("received_at -> finished_at", server), flush=True)
    print(describe("client send -> finished_at", client), flush=True)
    print(
        describe("HTTP response time", [item.response_seconds for item in sent]),
        flush=True,
    )
    p99 = common.percentile(server, 0.99)
    p99_text = "unfinished" if math.isinf(p99) else f"{1000 * p99:.0f} ms"
    print(f"p99 {p99_text} (target: under 1000 ms)", flush=True)
    return {"p50": common.percentile(server, 0.5), "p99": p99, "finished": finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20, help="deliveries per second")
    parser.add_argument("--duration", type=float, default=30, help="seconds of sending")
    parser.add_argument(
        "--threads", type=int, default=4, help="client and server threads"
    )
    parser.add_argument(
        "--broker",
        default=None,
        help="Q_BROKER for the server and the cluster: orm or a redis:// URL "
        "(default: the environment's Q_BROKER, else orm)",
    )
    args = parser.parse_args()
    if args.broker:
        os.environ["Q_BROKER"] = args.broker
    common.configure()
    run(args.rate, args.duration, args.threads)


if __name__ == "__main__":
    main()
