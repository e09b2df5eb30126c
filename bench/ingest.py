"""Ingest throughput: the inbound endpoint against a bare view on one server.

One gunicorn (2 workers, gthread) serves both ``/api/v1/inbound/pipedrive/``
and the bare view of ``bench/bare_urls.py``, which only inserts the raw body.
The pipeline runs on no worker here (``MESHLINE_SYNC_PIPELINE`` off and no
qcluster), so only receiving is measured, including the django-q2 task row
that the ORM broker writes for every accepted delivery. A few client threads
with keep-alive sessions post the same signed Pipedrive bodies to both, each
body a distinct deal. The client shares the two cores with the server.

Run: ``python -m bench.ingest`` (``bench/run`` sets the database up).
"""

import argparse
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from bench import common


@dataclass
class Pass:
    sent: int = 0
    elapsed: float = 0.0
    statuses: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0


def drive(
    url: str, bodies: list[bytes], headers: dict, threads: int, limit: float
) -> Pass:
    """Post every body once from ``threads`` threads; stop early after ``limit`` s."""
    indexes = itertools.count()
    lock = threading.Lock()
    result = Pass()
    deadline = time.monotonic() + limit

    def work():
        with requests.Session() as session:
            while time.monotonic() < deadline:
                index = next(indexes)
                if index >= len(bodies):
                    return
                response = session.post(
                    url, data=bodies[index], headers=headers, timeout=30
                )
                with lock:
                    result.sent += 1
                    result.statuses[response.status_code] += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    result.elapsed = time.perf_counter() - started
    return result


def report(name: str, passes: list[Pass]) -> float:
    sent = sum(p.sent for p in passes)
    elapsed = sum(p.elapsed for p in passes)
    statuses = sum((p.statuses for p in passes), Counter())
    rounds = ", ".join(f"{p.rate:.0f}" for p in passes)
    rate = sent / elapsed if elapsed else 0.0
    print(
        f"{name:<18} {rate:8.1f} requests/s  ({sent} requests in {elapsed:.1f} s; "
        f"rounds: {rounds}; statuses: {dict(statuses)})",
        flush=True,
    )
    return rate


def run(requests_per_round: int, rounds: int, threads: int, limit: float) -> dict:
    from django.db import connection

    from bench.bare_urls import BARE_PATH, CREATE_RAW_TABLE

    common.load_configuration()
    with connection.cursor() as cursor:
        cursor.execute(CREATE_RAW_TABLE)
    headers = common.pipedrive_headers()
    first_id = common.first_deal_id()
    warmup = 100
    bodies = common.pipedrive_bodies(warmup + rounds * requests_per_round, first_id)

    bare, real = [], []
    with common.gunicorn(workers=2, threads=threads) as base_url:
        real_url = base_url + "/api/v1/inbound/pipedrive/"
        bare_url = base_url + BARE_PATH
        drive(bare_url, bodies[:warmup], headers, threads, limit)
        drive(real_url, bodies[:warmup], headers, threads, limit)
        for round_number in range(rounds):
            start = warmup + round_number * requests_per_round
            chunk = bodies[start : start + requests_per_round]
            bare.append(drive(bare_url, chunk, headers, threads, limit))
            real.append(drive(real_url, chunk, headers, threads, limit))

    common.heading(f"ingest throughput (HTTP, gunicorn 2 workers x {threads} threads)")
    bare_rate = report("bare view", bare)
    real_rate = report("inbound endpoint", real)
    ratio = real_rate / bare_rate if bare_rate else 0.0
    print(f"ratio inbound/bare  {ratio:.2f}  (target: at least 0.50)", flush=True)
    check_rows(first_id, warmup + rounds * requests_per_round)
    return {"bare": bare_rate, "inbound": real_rate, "ratio": ratio}


def check_rows(first_id: int, expected: int) -> None:
    """Print how many deliveries and task rows the endpoint stored."""
    from django_q.models import OrmQ

    from syncflows.models import Delivery, InboundEvent

    events = InboundEvent.objects.filter(
        connector__slug="pipedrive",
        record_id__in=[str(first_id + i) for i in range(expected)],
    ).count()
    accepted = Delivery.objects.filter(status=Delivery.Status.ACCEPTED).count()
    print(
        f"stored: {events} of {expected} distinct deals as inbound events; "
        f"{accepted} accepted deliveries and {OrmQ.objects.count()} queued task rows "
        "in the database",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--requests", type=int, default=1000, help="requests per endpoint per round"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds, alternating the endpoints"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=4,
        help="client threads, also server threads per worker",
    )
    parser.add_argument(
        "--limit", type=float, default=60, help="maximum seconds of one pass"
    )
    args = parser.parse_args()
    common.configure()
    run(args.requests, args.rounds, args.threads, args.limit)


if __name__ == "__main__":
    main()
