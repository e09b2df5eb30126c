"""Batched processing: many record changes and commands, one statement per table.

The pipeline plans a batch of changes in Python and writes them together, and
the dispatcher sends a batch of sandbox commands with one read of the
catalogue and one insert. These tests pin what must not change with the
batch size: the query count, the outcome of each change, and the ledger.
"""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.datastructures import CaseInsensitiveMapping

from exceptions.models import ExceptionCase
from syncflows.connectors import DeliveryRequest
from syncflows.demo import _pipedrive_won, load_demo_configuration
from syncflows.models import Command, LedgerEntry, RecordChange, SandboxOrder, SyncRun
from syncflows.services.dispatch import dispatch_due
from syncflows.services.pipeline import process_changes

Step = LedgerEntry.Step
WHEN = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def pipedrive(db, settings, monkeypatch):
    """The demo configuration, with changes left for the test to process."""
    settings.MESHLINE_SYNC_PIPELINE = False
    monkeypatch.setattr("syncflows.tasks.enqueue_changes", lambda change_ids: None)
    monkeypatch.setattr("syncflows.tasks.enqueue_dispatch", lambda: None)
    return load_demo_configuration()["pipedrive"]


def deliver(connector, deal_id: int, value: str = "100.00", currency: str = "EUR", when=WHEN):
    """Receive one won deal; return its record change ids."""
    from syncflows.services.receive import receive

    body = json.dumps(_pipedrive_won(deal_id, value, currency, when)).encode()
    request = DeliveryRequest(
        method="POST",
        url="file://batches/pipedrive",
        headers=CaseInsensitiveMapping({"Content-Type": "application/json"}),
        body=body,
        received_at=timezone.now(),
        source="file",
        verified=True,
    )
    return receive(connector, request).change_ids


def deliver_many(connector, first_id: int, count: int) -> list[int]:
    ids = []
    for offset in range(count):
        ids += deliver(connector, first_id + offset, f"{100 + offset}.50")
    return ids


def queries(function, *args, **kwargs):
    with CaptureQueriesContext(connection) as captured:
        result = function(*args, **kwargs)
    return result, len(captured.captured_queries)


def test_pipeline_queries_constant_in_batch_size(pipedrive):
    # Warm the lookup cache, which the first batch of a process reads.
    process_changes(deliver_many(pipedrive, 1000, 1))
    few, few_queries = queries(process_changes, deliver_many(pipedrive, 2000, 5))
    many, many_queries = queries(process_changes, deliver_many(pipedrive, 3000, 40))
    assert len(few) == 5
    assert len(many) == 40
    assert many_queries == few_queries
    assert RecordChange.objects.filter(status=RecordChange.Status.MATCHED).count() == 46
    assert Command.objects.filter(state=Command.State.PENDING).count() == 46


def test_dispatch_queries_constant_in_batch_size(pipedrive):
    # Both fit in the first claim of a dispatch run (20 commands); later
    # claims take 100 while every command goes to a batch adapter.
    process_changes(deliver_many(pipedrive, 1000, 1))
    dispatch_due(worker="warm-up")
    process_changes(deliver_many(pipedrive, 2000, 5))
    few, few_queries = queries(dispatch_due, worker="w1")
    process_changes(deliver_many(pipedrive, 3000, 18))
    many, many_queries = queries(dispatch_due, worker="w1")
    assert (few, many) == (5, 18)
    assert many_queries == few_queries
    assert SandboxOrder.objects.count() == 24
    totals = dict(SandboxOrder.objects.values_list("crm_reference", "total"))
    assert totals["pipedrive:deal:3017"] == Decimal("117.500")
    assert totals["pipedrive:deal:2000"] == Decimal("100.500")


def test_task_backlog_runs_in_batches(pipedrive):
    from syncflows.tasks import process_changes_task

    change_ids = deliver_many(pipedrive, 8000, 30)
    # The first task fills its batch with the waiting changes.
    assert process_changes_task(change_ids[:1]) == 30
    assert SandboxOrder.objects.count() == 30
    # The later tasks find their change done, with one query each.
    ran, count = queries(process_changes_task, change_ids[1:2])
    assert (ran, count) == (0, 1)


def test_batch_ledger_rows_per_change(pipedrive):
    change_ids = deliver_many(pipedrive, 4000, 3)
    command_ids = process_changes(change_ids)
    dispatch_due(worker="w1")
    for change_id, command_id in zip(change_ids, command_ids, strict=True):
        change = RecordChange.objects.get(pk=change_id)
        rows = LedgerEntry.objects.filter(record_key=change.record.record_key).order_by("id")
        assert list(rows.values_list("step", flat=True)) == [
            Step.NORMALISE,
            Step.MATCH,
            Step.TRANSFORM,
            Step.VALIDATE,
            Step.ROUTE,
            Step.ENQUEUE,
            Step.EXECUTE,
        ]
        enqueue = rows.get(step=Step.ENQUEUE)
        assert enqueue.command_id == command_id
        assert enqueue.message == (
            f"Command {command_id} (sales_order.create) queued for sandbox in live mode."
        )
        run = SyncRun.objects.get(change=change)
        assert (run.state, run.command_id) == (SyncRun.State.QUEUED, command_id)
        assert set(rows.exclude(step=Step.NORMALISE).values_list("event_id", flat=True)) <= {
            change.event_id,
            None,
        }
        order = SandboxOrder.objects.get(crm_reference=change.record.record_key)
        assert Command.objects.get(pk=command_id).erp_document_number == order.number
        assert order.number == f"SO-{order.pk:06d}"
        assert order.invoice_number == f"INV-{order.pk:06d}"


def test_batch_failing_change_opens_case(pipedrive):
    good = deliver(pipedrive, 5001, "250.00") + deliver(pipedrive, 5002, "75.25")
    bad = deliver(pipedrive, 5003, "not-an-amount")
    last = deliver(pipedrive, 5004, "10.00")
    command_ids = process_changes(good + bad + last)
    assert len(command_ids) == 3
    assert RecordChange.objects.get(pk=bad[0]).status == RecordChange.Status.MATCHED
    case = ExceptionCase.objects.get()
    assert (case.reason_code, case.record_key) == ("schema_invalid", "pipedrive:deal:5003")
    run = SyncRun.objects.get(change_id=bad[0])
    assert run.state == SyncRun.State.FAILED
    assert dispatch_due(worker="w1") == 3
    assert sorted(SandboxOrder.objects.values_list("total", flat=True)) == [
        Decimal("10.000"),
        Decimal("75.250"),
        Decimal("250.000"),
    ]


def test_batch_two_changes_one_command(pipedrive):
    first = deliver(pipedrive, 6001, "300.00", when=WHEN)
    again = deliver(pipedrive, 6001, "300.00", when=WHEN.replace(minute=5))
    assert len(first + again) == 2
    command_ids = process_changes(first + again)
    assert len(command_ids) == 1
    states = dict(SyncRun.objects.values_list("change_id", "state"))
    assert states == {first[0]: SyncRun.State.QUEUED, again[0]: SyncRun.State.UNCHANGED}
    unchanged = LedgerEntry.objects.get(step=Step.UNCHANGED)
    assert unchanged.message.startswith(f"Command {command_ids[0]} already holds this payload")


def test_batch_changed_amount_supersedes_command(pipedrive):
    (queued,) = process_changes(deliver(pipedrive, 6101, "300.00", when=WHEN))
    changed = deliver(pipedrive, 6101, "320.00", when=WHEN.replace(minute=5))
    other = deliver(pipedrive, 6102, "20.00")
    command_ids = process_changes(changed + other)
    assert len(command_ids) == 2
    assert Command.objects.get(pk=queued).state == Command.State.SUPERSEDED
    live = dict(
        Command.objects.exclude(state=Command.State.SUPERSEDED).values_list(
            "record__record_id", "payload__total"
        )
    )
    assert live == {"6101": "320.00", "6102": "20.00"}
    dispatch_due(worker="w1")
    assert sorted(SandboxOrder.objects.values_list("total", flat=True)) == [
        Decimal("20.000"),
        Decimal("320.000"),
    ]


def test_sandbox_batch_new_found_rejected(pipedrive):
    process_changes(deliver(pipedrive, 7001, "40.00"))
    dispatch_due(worker="w1")
    existing = SandboxOrder.objects.get()
    # The outcome of the first command is lost: the ERP contains the order, but
    # the command is open again, as after a worker died.
    command = Command.objects.get()
    Command.objects.filter(pk=command.pk).update(state=Command.State.PENDING, claimed_by="")
    process_changes(
        deliver(pipedrive, 7002, "55.00") + deliver(pipedrive, 7003, "60.00", currency="XXX")
    )
    assert dispatch_due(worker="w2") == 3
    states = dict(Command.objects.values_list("record__record_id", "state"))
    assert states == {
        "7001": Command.State.SUCCEEDED,
        "7002": Command.State.SUCCEEDED,
        "7003": Command.State.FAILED,
    }
    assert SandboxOrder.objects.count() == 2
    found = LedgerEntry.objects.get(step=Step.EXISTING)
    assert found.command_id == command.pk
    assert existing.number in found.message
    case = ExceptionCase.objects.get()
    assert (case.reason_code, case.record_key) == ("master_data_missing", "pipedrive:deal:7003")
