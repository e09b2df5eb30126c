"""A worker process for the CRM pacing tests.

It reads one Pipedrive deal again and again through the real CRM client, in
one or more threads, and prints a JSON summary as its last stdout line:
``{"read": n, "requests": n, "rate_limited": n, "retries": n}`` plus the
reason code of every read that failed.

Run it as ``python -m tests.pace_worker --connector-id 7 --deal 1001`` with
``DATABASE_URL`` set to the test database. As in a deployed worker,
``Q_BROKER`` and ``MESHLINE_CRM_PACER`` select where the pace is kept.
"""

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

TIMED_OUT = 3


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connector-id", type=int, required=True)
    parser.add_argument("--deal", required=True, help="id of the Pipedrive deal read")
    parser.add_argument("--reads", type=int, default=1, help="reads per thread")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ready-file", type=Path, help="created once Django is set up")
    parser.add_argument("--go-file", type=Path, help="wait for this file, then read")
    parser.add_argument(
        "--deadline", type=float, default=60, help="seconds to wait for the go file"
    )
    return parser.parse_args(argv)


def warm_up(client) -> None:
    """Send one request to the token endpoint, which the fake leaves out of its
    arrival times, so that the first paced call does not also pay for the
    set-up of the HTTP client and the fake's first connection."""
    client.transport.session.get(
        client.access.token_url, timeout=client.access.timeout_seconds
    )


def read_deal(client, args, summary: dict, lock: threading.Lock) -> None:
    from syncflows.crm import CrmError, ReadRequest

    try:
        for _ in range(args.reads):
            try:
                client.read("deal", args.deal, ReadRequest())
                outcome = "read"
            except CrmError as exc:
                outcome = exc.reason_code
            with lock:
                summary[outcome] = summary.get(outcome, 0) + 1
    finally:
        with lock:
            for key in ("requests", "rate_limited", "retries"):
                summary[key] += client.stats[key]
        client.close()


def run(args) -> int:
    from syncflows.crm import get_client
    from syncflows.models import ConnectorApiAccess

    access = ConnectorApiAccess.objects.get(connector_id=args.connector_id)
    clients = [get_client(access) for _ in range(args.threads)]
    for client in clients:
        warm_up(client)
    if args.ready_file:
        args.ready_file.touch()
    deadline = time.monotonic() + args.deadline
    while args.go_file and not args.go_file.exists():
        if time.monotonic() > deadline:
            return TIMED_OUT
        time.sleep(0.01)

    summary = {"read": 0, "requests": 0, "rate_limited": 0, "retries": 0}
    lock = threading.Lock()
    threads = [
        threading.Thread(target=read_deal, args=(client, args, summary, lock))
        for client in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(summary), flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshline.settings")
    import django

    django.setup()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
