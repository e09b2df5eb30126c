"""A Meshline worker process for the reliability tests.

``work`` loops over the pipeline the way a deployed worker does: it processes
record changes that are still applied, optionally sweeps, then claims and runs
due commands. It exits when no work remains, or with status 3 at its deadline.
Its last stdout line is a JSON summary with the ids of the commands it claimed.

``produce`` receives signed Pipedrive deliveries in this process, so that the
task messages go to whatever broker ``Q_BROKER`` configures.

Run it as ``python -m tests.reliability_worker work --name a`` with
``DATABASE_URL`` set to the test database.
"""

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_ITERATIONS = 200_000
TIMED_OUT = 3


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    work = commands.add_parser("work", help="process changes and run commands")
    work.add_argument("--name", required=True, help="worker name stored in claimed_by")
    work.add_argument("--process", action="store_true", help="process applied changes")
    work.add_argument("--sweep", action="store_true", help="run sweep() every loop")
    work.add_argument("--claim-limit", type=int, default=10, help="commands per claim")
    work.add_argument(
        "--batch", type=int, default=50, help="changes per processing batch"
    )
    work.add_argument(
        "--deadline", type=float, default=180, help="seconds before giving up"
    )
    work.add_argument("--ready-file", type=Path, help="created once Django is set up")
    work.add_argument("--go-file", type=Path, help="wait for this file before working")
    work.add_argument(
        "--hang-after",
        type=int,
        help="after this many ERP writes, commit the next order and then hang",
    )

    produce = commands.add_parser("produce", help="receive signed Pipedrive deliveries")
    produce.add_argument("--count", type=int, required=True)
    produce.add_argument("--first-id", type=int, required=True)
    produce.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def hang_after(count: int) -> None:
    """Make the sandbox ERP hang after committing order number ``count + 1``.

    The order is committed but the command's outcome is never written, which
    is the state a worker leaves when it dies right after the ERP's response.
    """
    from syncflows.adapters.sandbox import SandboxAdapter

    original = SandboxAdapter.execute
    writes = 0

    def execute(self, command):
        nonlocal writes
        result = original(self, command)
        writes += 1
        if writes > count:
            logger.warning(
                "Hanging after ERP write %s (%s)", writes, result.document_number
            )
            time.sleep(3600)
        return result

    SandboxAdapter.execute = execute


def applied_change_ids(limit: int, rng: random.Random) -> list[int]:
    from syncflows.models import RecordChange

    oldest = list(
        RecordChange.objects.filter(status=RecordChange.Status.APPLIED)
        .order_by("id")
        .values_list("id", flat=True)[: limit * 4]
    )
    # Two workers draw different samples of the same oldest changes, so they
    # meet on some records and pass each other on the rest. Ascending order,
    # as in a task message or the sweep, keeps their record locks in one order.
    return sorted(rng.sample(oldest, min(limit, len(oldest))))


def normalise_stored() -> int:
    """Apply the events of deliveries that the webhook endpoint stored, as the
    worker's task does; return how many this worker normalised."""
    from syncflows.models import Delivery
    from syncflows.services.receive import normalise_delivery

    stored = Delivery.objects.filter(status=Delivery.Status.RECEIVED).order_by("id")
    results = [normalise_delivery(pk) for pk in stored.values_list("id", flat=True)[:50]]
    return sum(1 for result in results if result is not None)


def work_remains() -> bool:
    from syncflows.models import Command, Delivery, RecordChange

    if Delivery.objects.filter(status=Delivery.Status.RECEIVED).exists():
        return True
    if RecordChange.objects.filter(status=RecordChange.Status.APPLIED).exists():
        return True
    return Command.objects.filter(state__in=Command.OPEN_STATES).exists()


def run_once(args, rng, summary) -> int:
    """Run one round of processing, sweeping and dispatching; return the work done."""
    from syncflows.services.dispatch import claim, run_command, sweep
    from syncflows.services.pipeline import process_changes

    done = 0
    if args.process:
        done += normalise_stored()
        ids = applied_change_ids(args.batch, rng)
        if ids:
            summary["commands_queued"] += len(process_changes(ids))
            done += len(ids)
    if args.sweep:
        requeued = sweep()
        summary["requeued"] += requeued
        done += requeued
    claimed = claim(args.claim_limit, args.name)
    summary["claimed"].extend(claimed)
    for command_id in claimed:
        state = run_command(command_id, args.name)
        summary["states"][state] = summary["states"].get(state, 0) + 1
    return done + len(claimed)


def work(args) -> int:
    rng = random.Random(args.name)
    if args.hang_after is not None:
        hang_after(args.hang_after)
    if args.ready_file:
        args.ready_file.touch()
    deadline = time.monotonic() + args.deadline
    while args.go_file and not args.go_file.exists():
        if time.monotonic() > deadline:
            return TIMED_OUT
        time.sleep(0.01)

    summary = {"name": args.name, "claimed": [], "states": {}, "requeued": 0}
    summary["commands_queued"] = 0
    status = TIMED_OUT
    for _ in range(MAX_ITERATIONS):
        if time.monotonic() > deadline:
            break
        if run_once(args, rng, summary):
            continue
        if not work_remains():
            status = 0
            break
        time.sleep(0.05)
    print(json.dumps(summary), flush=True)
    return status


def produce(args) -> int:
    from django_q.brokers import get_broker

    from syncflows.models import Connector
    from syncflows.services.receive import receive
    from tests.workers import pipedrive_request, pipedrive_won_body, won_deals

    connector = Connector.objects.get(slug="pipedrive")
    statuses: dict[str, int] = {}
    for deal_id, value in won_deals(args.count, args.first_id, args.seed):
        request = pipedrive_request(pipedrive_won_body(deal_id, value))
        result = receive(connector, request)
        statuses[result.status] = statuses.get(result.status, 0) + 1
    broker = type(get_broker()).__name__
    print(json.dumps({"broker": broker, "statuses": statuses}), flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshline.settings")
    import django

    django.setup()
    if args.command == "produce":
        return produce(args)
    return work(args)


if __name__ == "__main__":
    sys.exit(main())
