"""A real ``qcluster`` stopped by SIGTERM while it writes to a slow ERP.

The ERP is the fake REST ERP in this process, on 127.0.0.1. It stores each
order when the request arrives and holds the response until the test
releases it, so the test sends the signal while two ERP writes are in
flight. SIGTERM goes either to the whole process group (systemd's
``KillMode=control-group``) or to the ``qcluster`` process alone (``kill PID``,
``docker stop``). Each case runs on the ORM broker and on the Redis broker;
only Redis database ``MESHLINE_TEST_REDIS_URL`` is flushed.
"""

import os
import signal
from collections import Counter

import pytest
import redis
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis
from django_q.models import OrmQ, Schedule, Task
from django_q.tasks import async_task

from syncflows import tasks
from syncflows.demo import SKUS, load_demo_configuration
from syncflows.models import Command, Connector, LedgerEntry
from syncflows.services.pipeline import process_changes
from syncflows.services.receive import receive
from tests.fakes import FakeErp
from tests.workers import (
    pipedrive_request,
    pipedrive_won_body,
    process_group_exists,
    require_postgresql,
    start_qcluster,
    stop_all,
    subprocess_env,
    wait_until,
    won_deals,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

REDIS_URL = os.environ.get("MESHLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
DEADLINE = 60  # seconds
DEALS = 6
# Threads per worker, so two commands are in flight when the signal arrives.
CONCURRENCY = 2
ORDERS = "/api/orders"
DISPATCH_TASK = "syncflows.tasks.dispatch_task"
STOP_LOGGED = "received signal 15: stopping after the commands in flight"


class RedisOnTestDatabase(Redis):
    """django-q2's Redis broker on the test's Redis database.

    This process runs on the ORM broker, so django-q2's settings hold no
    Redis URL for the stock class to connect to.
    """

    @staticmethod
    def get_connection(list_key=None):
        return redis.from_url(REDIS_URL)


class OrmBroker:
    name = "orm"
    env = {"Q_BROKER": "orm"}

    def __init__(self):
        self.broker = ORM()

    def queued(self) -> int:
        return OrmQ.objects.count()


class RedisBroker:
    name = "redis"
    env = {"Q_BROKER": REDIS_URL}

    def __init__(self):
        self.broker = RedisOnTestDatabase()

    def queued(self) -> int:
        return self.broker.queue_size()


@pytest.fixture(params=["orm", "redis"])
def broker(request):
    if request.param == "orm":
        yield OrmBroker()
        return
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is not reachable: {exc}")
    client.flushdb()
    yield RedisBroker()
    client.flushdb()
    client.close()


@pytest.fixture
def erp():
    with FakeErp(skus=SKUS) as server:
        yield server


@pytest.fixture
def commands(db, erp, monkeypatch):
    """Store DEALS pending commands for the fake ERP before any cluster starts.

    The deliveries are received without queueing a task and processed here,
    so the first claim of the cluster takes every command.
    """
    require_postgresql()
    settings = erp.destination_settings(timeout=DEADLINE)
    load_demo_configuration(destination_adapter="rest", destination_settings=settings)
    # Only the tasks this test queues run: no sweep or escalation schedule.
    Schedule.objects.all().delete()
    change_ids = []
    monkeypatch.setattr(tasks, "enqueue_changes", change_ids.extend)
    connector = Connector.objects.get(slug="pipedrive")
    for deal_id, value in won_deals(DEALS, first_id=700_001, seed=31):
        receive(connector, pipedrive_request(pipedrive_won_body(deal_id, value)))
    process_changes(change_ids)
    queued = list(Command.objects.order_by("id"))
    assert len(queued) == DEALS
    assert {command.state for command in queued} == {Command.State.PENDING}
    return queued


@pytest.fixture
def processes():
    started = []
    yield started
    stop_all(started)


def cluster_env(broker, erp) -> dict:
    return subprocess_env(
        **broker.env,
        **erp.environment(),
        Q_WORKERS="2",
        MESHLINE_DISPATCH_CONCURRENCY=str(CONCURRENCY),
        LOG_LEVEL="INFO",
    )


def rows(step, command) -> int:
    return LedgerEntry.objects.filter(step=step, command=command).count()


def stop_logged(process) -> bool:
    text = process.stderr_path.read_text(encoding="utf-8", errors="replace")
    return STOP_LOGGED in text


@pytest.mark.parametrize("target", ["group", "qcluster"])
def test_sigterm_finishes_writes_in_flight(
    target, broker, erp, commands, processes, tmp_path
):
    release_responses = erp.hold_next(DEALS, path=ORDERS, method="POST")
    async_task(DISPATCH_TASK, group="dispatch", broker=broker.broker)
    first = start_qcluster("qcluster-1", tmp_path, cluster_env(broker, erp))
    processes.append(first)
    wait_until(
        lambda: erp.count(ORDERS, "POST") == CONCURRENCY,
        DEADLINE,
        [first],
        f"{CONCURRENCY} ERP writes in flight",
    )

    if target == "group":
        os.killpg(first.pid, signal.SIGTERM)
    else:
        os.kill(first.pid, signal.SIGTERM)
    wait_until(lambda: stop_logged(first), DEADLINE, [first], "the stop message")
    release_responses.set()
    assert first.wait(DEADLINE) == 0, first.stderr_tail()
    wait_until(
        lambda: not process_group_exists(first.pid),
        DEADLINE,
        [],
        "every process of the first cluster to exit",
    )

    # The writes in flight finished and were recorded; the rest went back.
    succeeded = Command.objects.filter(state=Command.State.SUCCEEDED)
    succeeded_ids = set(succeeded.values_list("pk", flat=True))
    in_flight = [command for command in commands if command.pk in succeeded_ids]
    assert len(in_flight) == CONCURRENCY
    assert len(erp.orders) == CONCURRENCY
    assert {o["idempotency_key"] for o in erp.orders.values()} == {
        c.idempotency_key for c in in_flight
    }
    for command in in_flight:
        assert rows(LedgerEntry.Step.EXECUTE, command) == 1
    released = Command.objects.exclude(pk__in=[c.pk for c in in_flight])
    assert released.count() == DEALS - CONCURRENCY
    assert set(released.values_list("state", flat=True)) == {Command.State.PENDING}
    assert set(released.values_list("claimed_by", flat=True)) == {""}
    assert set(released.values_list("claimed_at", flat=True)) == {None}
    # The monitor saved every task result, and one dispatch task is queued for
    # the next cluster. The stopping cluster's pusher may take that task
    # before it stops, and its worker then queues it again, so the first
    # cluster runs one dispatch task or more.
    ran_first = Task.objects.filter(func=DISPATCH_TASK).count()
    assert ran_first >= 1
    assert Task.objects.filter(func=DISPATCH_TASK, success=False).count() == 0
    assert broker.queued() == 1

    second = start_qcluster("qcluster-2", tmp_path, cluster_env(broker, erp))
    processes.append(second)
    wait_until(
        lambda: Command.objects.filter(state=Command.State.SUCCEEDED).count()
        == DEALS,
        DEADLINE,
        [second],
        f"{DEALS} commands to succeed",
    )
    wait_until(
        lambda: Task.objects.filter(func=DISPATCH_TASK).count() == ran_first + 1,
        DEADLINE,
        [second],
        "the second dispatch task's result",
    )
    os.kill(second.pid, signal.SIGTERM)
    assert second.wait(DEADLINE) == 0, second.stderr_tail()

    # Every command wrote exactly one ERP document, and its outcome once.
    assert erp.count(ORDERS, "POST") == DEALS
    assert len(erp.orders) == DEALS
    keys = Counter(order["idempotency_key"] for order in erp.orders.values())
    assert keys == Counter({command.idempotency_key: 1 for command in commands})
    numbers = set(Command.objects.values_list("erp_document_number", flat=True))
    assert numbers == {f"SO-{n:06d}" for n in range(1, DEALS + 1)}
    for command in commands:
        assert rows(LedgerEntry.Step.EXECUTE, command) == 1
        assert rows(LedgerEntry.Step.EXISTING, command) == 0
        assert rows(LedgerEntry.Step.REQUEUE, command) == 0
    assert Task.objects.filter(func=DISPATCH_TASK, success=False).count() == 0
    assert broker.queued() == 0
