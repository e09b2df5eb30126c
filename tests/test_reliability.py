"""Exactly-once delivery under redeliveries, concurrent workers and a killed worker.

Worker subprocesses (``tests/reliability_worker.py``) run against the same
PostgreSQL test database, so every test commits its data (``transaction=True``).
Task messages are switched off in the test process: the workers find applied
changes and due commands by their state, as the sweep does after a lost message.
"""

import json
import random
import threading
from collections import Counter
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone
from django.utils.datastructures import CaseInsensitiveMapping

from exceptions.models import ExceptionCase
from syncflows.connectors import DeliveryRequest
from syncflows.models import (
    Command,
    InboundEvent,
    LedgerEntry,
    RecordChange,
    SandboxOrder,
)
from syncflows.services.config import load_config
from syncflows.services.pipeline import process_change, process_changes
from syncflows.services.receive import receive
from tests.workers import (
    pipedrive_won_body,
    require_postgresql,
    start_worker,
    stop_all,
    subprocess_env,
    wait_for_files,
    wait_until,
    won_deals,
)

pytestmark = [
    pytest.mark.slow,
    # serialized_rollback restores the migrations' rows (roles, schedules)
    # after the flush that ends each transactional test.
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

WORKER_TIMEOUT = 210  # seconds; each worker gives up by itself after 180 s
RUN_STEPS = ("execute", "existing")


@pytest.fixture
def pipedrive(settings, monkeypatch):
    from syncflows.demo import load_demo_configuration

    require_postgresql()
    settings.MESHLINE_SYNC_PIPELINE = False
    monkeypatch.setattr("syncflows.tasks.enqueue_changes", lambda change_ids: None)
    return load_demo_configuration()["pipedrive"]


@pytest.fixture
def workers():
    """Collect started Process objects and stop every one of them at teardown."""
    started = []
    yield started
    stop_all(started)


def receive_verified(connector, raw: bytes):
    request = DeliveryRequest(
        method="POST",
        url="file://reliability/pipedrive",
        headers=CaseInsensitiveMapping({"Content-Type": "application/json"}),
        body=raw,
        received_at=timezone.now(),
        source="file",
        verified=True,
    )
    return receive(connector, request)


def deal_reference(deal_id: int) -> str:
    return f"pipedrive:deal:{deal_id}"


def queue_commands(connector, deals) -> list[int]:
    """Receive one won delivery per deal and map each to a pending command."""
    for deal_id, value in deals:
        result = receive_verified(
            connector, json.dumps(pipedrive_won_body(deal_id, value)).encode()
        )
        assert result.status == "accepted"
    change_ids = list(
        RecordChange.objects.filter(status=RecordChange.Status.APPLIED).values_list(
            "id", flat=True
        )
    )
    command_ids = process_changes(change_ids)
    assert len(command_ids) == len(deals)
    return command_ids


def run_rows_per_command() -> Counter:
    rows = LedgerEntry.objects.filter(step__in=RUN_STEPS).values_list(
        "command_id", flat=True
    )
    return Counter(rows)


def orders_by_reference() -> dict[str, Decimal]:
    return dict(SandboxOrder.objects.values_list("crm_reference", "total"))


def start_together(workers, log_dir, options) -> None:
    """Start workers "a" and "b" and let them begin work at the same moment."""
    go_file = log_dir / "go"
    ready_files = [log_dir / "ready-a", log_dir / "ready-b"]
    for name, ready_file in zip(("a", "b"), ready_files, strict=True):
        flags = ["--ready-file", str(ready_file), "--go-file", str(go_file)]
        process = start_worker(
            f"worker-{name}", log_dir, "work", "--name", name, *flags, *options
        )
        workers.append(process)
    wait_for_files(ready_files, workers, timeout=60)
    go_file.touch()


def test_thousand_deals_delivered_three_times(pipedrive, send, workers, tmp_path):
    deals = won_deals(1000, first_id=500_001, seed=11)
    deliveries = []
    for deal_id, value in deals:
        raw = json.dumps(pipedrive_won_body(deal_id, value)).encode()
        # A second webhook registration sends the same change under its own id.
        other_webhook = pipedrive_won_body(deal_id, value, webhook_id="222222")
        deliveries += [raw, raw, json.dumps(other_webhook).encode()]
    random.Random(20261101).shuffle(deliveries)

    statuses = Counter()
    for index, raw in enumerate(deliveries):
        if index % 10 == 0:
            response = send.pipedrive(raw)
            assert response.status_code == 200, response.content
            statuses[response.json()["status"]] += 1
        else:
            statuses[receive_verified(pipedrive, raw).status] += 1

    start_together(workers, tmp_path, ["--process"])
    for process in workers:
        assert process.wait(WORKER_TIMEOUT) == 0, process.stderr_tail()

    assert statuses == {"accepted": 1000, "duplicate": 2000}
    assert SandboxOrder.objects.count() == 1000
    references = list(SandboxOrder.objects.values_list("crm_reference", flat=True))
    assert len(set(references)) == 1000
    assert orders_by_reference() == {deal_reference(d): value for d, value in deals}
    assert Command.objects.count() == 1000
    assert Command.objects.filter(state=Command.State.SUCCEEDED).count() == 1000
    assert ExceptionCase.objects.count() == 0
    assert InboundEvent.objects.count() == 1000
    assert LedgerEntry.objects.filter(step="duplicate").count() == 2000
    assert LedgerEntry.objects.filter(step="execute").count() == 1000
    assert LedgerEntry.objects.filter(step="existing").count() == 0
    assert (
        LedgerEntry.objects.filter(step__in=("retry", "fail", "requeue")).count() == 0
    )
    claimed = [process.result()["claimed"] for process in workers]
    assert len(claimed[0]) + len(claimed[1]) == 1000


def test_two_workers_never_run_command_twice(pipedrive, workers, tmp_path):
    command_ids = queue_commands(pipedrive, won_deals(500, first_id=600_001, seed=12))
    assert Command.objects.filter(state=Command.State.PENDING).count() == 500

    start_together(workers, tmp_path, ["--claim-limit", "5"])
    for process in workers:
        assert process.wait(WORKER_TIMEOUT) == 0, process.stderr_tail()

    claimed_a, claimed_b = (set(process.result()["claimed"]) for process in workers)
    assert claimed_a.isdisjoint(claimed_b)
    assert claimed_a | claimed_b == set(command_ids)
    # Both workers took part, so the disjoint check above is not vacuous.
    assert claimed_a
    assert claimed_b
    claimed_by = dict(Command.objects.values_list("id", "claimed_by"))
    assert {i for i, name in claimed_by.items() if name == "a"} == claimed_a
    assert {i for i, name in claimed_by.items() if name == "b"} == claimed_b

    assert run_rows_per_command() == Counter(
        {command_id: 1 for command_id in command_ids}
    )
    assert Command.objects.filter(state=Command.State.SUCCEEDED).count() == 500
    assert SandboxOrder.objects.count() == 500
    keys = SandboxOrder.objects.values("idempotency_key").annotate(n=Count("id"))
    assert {row["n"] for row in keys} == {1}
    assert set(SandboxOrder.objects.values_list("idempotency_key", flat=True)) == set(
        Command.objects.values_list("idempotency_key", flat=True)
    )


def hung_commands() -> set[int]:
    """Return the sent commands whose order is already in the sandbox ERP."""
    keys = SandboxOrder.objects.values_list("idempotency_key", flat=True)
    return set(
        Command.objects.filter(
            state=Command.State.SENT, idempotency_key__in=keys
        ).values_list("id", flat=True)
    )


def victim_hangs() -> bool:
    # Counted first: once 40 outcomes are written, a sent command with an order
    # can only be the one that hangs, not one between its write and outcome.
    if Command.objects.filter(state=Command.State.SUCCEEDED).count() < 40:
        return False
    return bool(hung_commands())


def test_killed_worker_loses_no_command(pipedrive, workers, tmp_path):
    deals = won_deals(300, first_id=700_001, seed=13)
    command_ids = queue_commands(pipedrive, deals)

    # The victim claims 10 commands at a time; its 41st ERP write commits the
    # order and then hangs before the command's outcome is written.
    victim = start_worker(
        "victim", tmp_path, "work", "--name", "victim", "--hang-after", "40"
    )
    workers.append(victim)
    wait_until(victim_hangs, 180, [victim], "the victim to hang after an ERP write")
    victim.kill()
    hung = hung_commands()

    succeeded = Command.objects.filter(state=Command.State.SUCCEEDED).count()
    left_sent = set(
        Command.objects.filter(state=Command.State.SENT).values_list("id", flat=True)
    )
    assert succeeded == 40
    assert len(hung) == 1
    assert hung < left_sent
    assert SandboxOrder.objects.count() == 41

    env = subprocess_env(MESHLINE_CLAIM_TIMEOUT_SECONDS="5")
    rescuer = start_worker(
        "rescuer", tmp_path, "work", "--name", "rescuer", "--sweep", env=env
    )
    workers.append(rescuer)
    assert rescuer.wait(WORKER_TIMEOUT) == 0, rescuer.stderr_tail()

    assert rescuer.result()["requeued"] == len(left_sent)
    requeued = LedgerEntry.objects.filter(step="requeue").values_list(
        "command_id", flat=True
    )
    assert sorted(requeued) == sorted(left_sent)
    existing = LedgerEntry.objects.filter(step="existing").values_list(
        "command_id", flat=True
    )
    assert set(existing) == hung
    assert LedgerEntry.objects.filter(step="execute").count() == 299
    assert run_rows_per_command() == Counter(
        {command_id: 1 for command_id in command_ids}
    )
    assert Command.objects.filter(state=Command.State.SUCCEEDED).count() == 300
    assert SandboxOrder.objects.count() == 300
    assert orders_by_reference() == {deal_reference(d): value for d, value in deals}


def hold_processing(change_id, locked, release, errors) -> None:
    """Process one change in a transaction that stays open until ``release``."""
    try:
        with transaction.atomic():
            process_change(change_id, load_config())
            locked.set()
            release.wait(30)
    except Exception as exc:  # reported by the test, which runs in another thread
        errors.append(exc)
    finally:
        locked.set()
        connection.close()


def test_receive_not_blocked_by_processing(pipedrive):
    (first, first_value), (second, second_value) = won_deals(2, 650_001, seed=14)
    receive_verified(
        pipedrive, json.dumps(pipedrive_won_body(first, first_value)).encode()
    )
    change_id = RecordChange.objects.get(status=RecordChange.Status.APPLIED).pk
    locked, release, errors = threading.Event(), threading.Event(), []
    holder = threading.Thread(
        target=hold_processing, args=(change_id, locked, release, errors)
    )
    holder.start()
    try:
        assert locked.wait(30)
        body = json.dumps(pipedrive_won_body(second, second_value)).encode()
        with transaction.atomic():
            # A receive of another deal has nothing to wait for, so any wait
            # longer than this is a lock on a row the two have no reason to share.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")
            result = receive_verified(pipedrive, body)
    finally:
        release.set()
        holder.join(30)

    assert errors == []
    assert result.status == "accepted"
