"""Tryton destination throughput: won deals through Meshline into trytond,
against a bare script that makes the same JSON-RPC calls directly.

One trytond serves both sides of a run: ``tests.tryton_server.TrytonServer``
starts it on a copy of the cached prepared SQLite database (built by
``setup_tryton`` on the first run on a machine, about 25 s).

- Meshline: the Pipedrive v1 deliveries are received first, untimed, through
  ``receive()``. The clock then covers ``process_changes`` (match, map,
  validate, route, outbox) and ``dispatch_due(concurrency=N)`` until no
  command is open, on the PostgreSQL database of ``DATABASE_URL``.
- Bare: N threads over distinct deals, each with its own ``TrytonAdapter``,
  call ``find_existing``, ``preflight`` and ``execute`` as the dispatcher
  does, on payloads of the same shape and amounts. A transient error is
  retried at once, as the Meshline side does with no backoff.

Both sides count their JSON-RPC calls, so the report shows they make the
same calls. Rounds alternate which side runs first, because the Tryton
database grows during the run.

Run: ``python -m bench.tryton`` (``bench/run`` sets the database up).
"""

import argparse
import copy
import hashlib
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from bench import common

# A transient Tryton error (such as SQLite's "database is locked") is retried
# this many times by the bare side before the run is declared broken.
BARE_ATTEMPTS = 20
RUN_LIMIT_SECONDS = 600


class RPCCounter:
    """Count the JSON-RPC requests of every TrytonRPC, from all threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: Counter = Counter()

    @contextmanager
    def active(self):
        from syncflows.adapters.tryton_rpc import TrytonRPC

        original = TrytonRPC._post
        counter = self

        def counted(rpc, method, params):
            with counter.lock:
                counter.calls[method] += 1
            return original(rpc, method, params)

        with mock.patch.object(TrytonRPC, "_post", counted):
            yield self

    def take(self) -> Counter:
        with self.lock:
            calls, self.calls = self.calls, Counter()
        return calls


def tryton_destination(server):
    from syncflows.demo import load_demo_configuration
    from syncflows.models import Destination

    settings = {
        "url": server.url,
        "database": server.database,
        "login": server.login,
        "timeout": 30,
    }
    connectors = load_demo_configuration("tryton", settings)
    destination = Destination.objects.get(slug="tryton")
    destination.credentials = {"password": server.password}
    destination.save()
    return connectors["pipedrive"], destination


def deal_amount(index: int) -> str:
    # The same amounts as common.pipedrive_bodies, so both sides book alike.
    return f"{100 + index % 9000}.{index % 100:02d}"


# The Meshline side.


def run_meshline(connector, count: int, concurrency: int) -> dict:
    from bench.pipeline import receive_deliveries
    from syncflows.models import Command
    from syncflows.services.dispatch import dispatch_due
    from syncflows.services.pipeline import process_changes

    first_id = common.first_deal_id()
    bodies = common.pipedrive_bodies(count, first_id)
    change_ids = receive_deliveries(connector, bodies)

    started = time.perf_counter()
    command_ids = process_changes(change_ids)
    processed = time.perf_counter()
    deadline = time.monotonic() + RUN_LIMIT_SECONDS
    open_commands = Command.objects.filter(
        pk__in=command_ids, state__in=Command.OPEN_STATES
    )
    while open_commands.exists() and time.monotonic() < deadline:
        if not dispatch_due(concurrency=concurrency):
            time.sleep(0.01)
    elapsed = time.perf_counter() - started

    commands = Command.objects.filter(pk__in=command_ids)
    return {
        "elapsed": elapsed,
        "process_seconds": processed - started,
        "states": Counter(commands.values_list("state", flat=True)),
        "attempts": sum(commands.values_list("attempts", flat=True)),
        "references": [f"pipedrive:deal:{first_id + i}" for i in range(count)],
        "template": commands.first().payload if commands else None,
    }


# The bare side.


def bare_payloads(template: dict, count: int, run_id: str) -> list[tuple[str, dict]]:
    """Build ``(idempotency key, payload)`` pairs of distinct deals."""
    pairs = []
    for index in range(count):
        amount = deal_amount(index)
        payload = copy.deepcopy(template)
        payload["crm_reference"] = f"bench-bare:{run_id}:{index}"
        payload["crm_amount"] = payload["total"] = amount
        for line in payload["lines"]:
            line["unit_price"] = line["line_total"] = amount
        key = hashlib.sha256(payload["crm_reference"].encode()).hexdigest()
        pairs.append((key, payload))
    return pairs


class BareWorkers:
    """One TrytonAdapter per thread, as the dispatcher keeps them."""

    def __init__(self, destination):
        self.destination = destination
        self.local = threading.local()
        self.adapters = []
        self.lock = threading.Lock()
        self.attempts = 0

    def adapter(self):
        from syncflows.adapters import get_adapter

        if getattr(self.local, "adapter", None) is None:
            self.local.adapter = get_adapter(self.destination)
            with self.lock:
                self.adapters.append(self.local.adapter)
        return self.local.adapter

    def book(self, pair) -> str:
        from syncflows.adapters import AdapterError, CommandData

        key, payload = pair
        data = CommandData(
            idempotency_key=key,
            command_type="sales_order.create",
            payload=payload,
            options={"create_missing_customers": True},
        )
        adapter = self.adapter()
        for _ in range(BARE_ATTEMPTS):
            with self.lock:
                self.attempts += 1
            try:
                existing = adapter.find_existing(key)
                if existing is not None:
                    return existing.reference
                adapter.preflight(data)
                return adapter.execute(data).reference
            except AdapterError as exc:
                if not exc.transient:
                    raise
        raise RuntimeError(f"Deal {key} failed {BARE_ATTEMPTS} times in a row")

    def close(self):
        for adapter in self.adapters:
            adapter.close()


def run_bare(destination, template, count: int, concurrency: int) -> dict:
    run_id = str(common.first_deal_id())
    pairs = bare_payloads(template, count, run_id)
    workers = BareWorkers(destination)
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="bare") as pool:
            references = list(pool.map(workers.book, pairs))
    finally:
        workers.close()
    elapsed = time.perf_counter() - started
    return {
        "elapsed": elapsed,
        "states": Counter({"succeeded": len(references)}),
        "attempts": workers.attempts,
        "references": [payload["crm_reference"] for _, payload in pairs],
    }


# Checking and reporting.


def tryton_sales(server, references: list[str]) -> int:
    from syncflows.adapters.tryton_rpc import TrytonRPC

    rpc = TrytonRPC(server.url, server.database, server.login, server.password)
    try:
        domain = [["description", "in", references]]
        return rpc.model("sale.sale", "search_count", domain)
    finally:
        rpc.close()


def check(server, side: str, result: dict, count: int) -> None:
    booked = tryton_sales(server, result["references"])
    if booked != count or result["states"] != Counter({"succeeded": count}):
        raise RuntimeError(
            f"The {side} run booked {booked} Tryton sales for {count} deals; "
            f"command states: {dict(result['states'])}"
        )


def report(side: str, round_number: int, result: dict, calls: Counter, count: int):
    rate = count / result["elapsed"]
    extra = ""
    if "process_seconds" in result:
        extra = f", process_changes {result['process_seconds']:.2f} s"
    print(
        f"round {round_number}  {side:<9} {rate:6.2f} deals/s  ({count} deals in "
        f"{result['elapsed']:.2f} s{extra}; {result['attempts']} attempts; "
        f"{sum(calls.values()) / count:.1f} RPC calls a deal)",
        flush=True,
    )
    return rate


def print_calls(meshline: Counter, bare: Counter, count: int) -> None:
    print(f"JSON-RPC calls a deal, last round (meshline / bare, {count} deals):")
    for method in sorted(set(meshline) | set(bare)):
        print(
            f"  {method:<40} {meshline[method] / count:6.2f} "
            f"{bare[method] / count:6.2f}"
        )


def warm_up(connector, destination, counter, concurrency: int) -> dict:
    with counter.active():
        result = run_meshline(connector, 2 * concurrency, concurrency)
        run_bare(destination, result["template"], 2 * concurrency, concurrency)
    counter.take()
    return result["template"]


def run_rounds(args, server, connector, destination) -> tuple[list, list]:
    counter = RPCCounter()
    template = warm_up(connector, destination, counter, args.concurrency)
    meshline_rates, bare_rates = [], []
    for round_number in range(1, args.rounds + 1):
        order = ["meshline", "bare"] if round_number % 2 else ["bare", "meshline"]
        calls = {}
        for side in order:
            with counter.active():
                if side == "meshline":
                    result = run_meshline(connector, args.deals, args.concurrency)
                else:
                    result = run_bare(
                        destination, template, args.deals, args.concurrency
                    )
            calls[side] = counter.take()
            check(server, side, result, args.deals)
            rate = report(side, round_number, result, calls[side], args.deals)
            (meshline_rates if side == "meshline" else bare_rates).append(rate)
        ratio = meshline_rates[-1] / bare_rates[-1]
        print(f"round {round_number}  ratio meshline/bare {ratio:.3f}", flush=True)
    print_calls(calls["meshline"], calls["bare"], args.deals)
    return meshline_rates, bare_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deals", type=int, default=100, help="deals a timed run")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="dispatch threads on both sides"
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each side")
    args = parser.parse_args()
    common.configure()
    from django.conf import settings
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("bench.tryton needs a PostgreSQL DATABASE_URL.")
    settings.MESHLINE_BACKOFF_BASE_SECONDS = 0
    from tests.tryton_server import TrytonServer

    workdir = Path(tempfile.mkdtemp(prefix="meshline-bench-tryton-"))
    server = TrytonServer(workdir)
    server.start()
    try:
        connector, destination = tryton_destination(server)
        common.heading(
            f"Tryton throughput ({args.concurrency} threads, {args.deals} deals a "
            f"run, {args.rounds} rounds, trytond {server.url})"
        )
        meshline_rates, bare_rates = run_rounds(args, server, connector, destination)
    finally:
        server.stop()
    # The copy of the Tryton database and its log are kept only after a failure.
    shutil.rmtree(workdir)
    meshline = statistics.median(meshline_rates)
    bare = statistics.median(bare_rates)
    print(f"meshline (median)  {meshline:6.2f} deals/s")
    print(f"bare (median)      {bare:6.2f} deals/s")
    print(f"ratio meshline/bare  {meshline / bare:.3f}  (target: at least 0.90)")


if __name__ == "__main__":
    main()
