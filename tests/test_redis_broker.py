"""The production task path: receive, a task message on Redis, a real qcluster.

django-q2 reads ``Q_CLUSTER`` once, when ``django_q.conf`` is imported at app
loading, so overriding the setting in this process would not move
``async_task`` off the ORM broker. The deliveries are therefore received in a
producer subprocess started with ``Q_BROKER`` set, as a web process would be.
Only Redis database 5 (``MESHLINE_TEST_REDIS_URL``) is flushed.
"""

import os
from collections import Counter

import pytest
import redis
from django_q.models import OrmQ, Task

from syncflows.models import Command, InboundEvent, LedgerEntry, SandboxOrder
from tests.workers import (
    require_postgresql,
    start_qcluster,
    start_worker,
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
DEADLINE = 120  # seconds
PROCESS_TASK = "syncflows.tasks.process_changes_task"
QUEUE_KEY = "django_q:meshline:q"  # django-q2's Redis list for the cluster "meshline"


@pytest.fixture
def redis_db():
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is not reachable: {exc}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def demo_config(db):
    from syncflows.demo import load_demo_configuration

    require_postgresql()
    load_demo_configuration()


@pytest.fixture
def processes():
    """Collect started Process objects and stop every one of them at teardown."""
    started = []
    yield started
    stop_all(started)


def broker_env():
    return subprocess_env(Q_BROKER=REDIS_URL, Q_WORKERS="2")


def start_producer(name, log_dir, count, first_id, seed):
    options = ["produce", "--count", str(count), "--first-id", str(first_id)]
    options += ["--seed", str(seed)]
    return start_worker(name, log_dir, *options, env=broker_env())


def all_tasks_done(count):
    """Return True once ``count`` commands succeeded and their tasks are saved."""
    succeeded = Command.objects.filter(state=Command.State.SUCCEEDED).count()
    saved = Task.objects.filter(func=PROCESS_TASK, success=True).count()
    return succeeded == count and saved == count


def assert_each_deal_ordered_once(deals):
    expected = {f"pipedrive:deal:{deal_id}": value for deal_id, value in deals}
    assert SandboxOrder.objects.count() == len(deals)
    assert dict(SandboxOrder.objects.values_list("crm_reference", "total")) == expected
    assert Command.objects.count() == len(deals)
    assert Command.objects.exclude(state=Command.State.SUCCEEDED).count() == 0
    command_ids = Command.objects.values_list("id", flat=True)
    run_rows = LedgerEntry.objects.filter(step__in=("execute", "existing"))
    counts = Counter(run_rows.values_list("command_id", flat=True))
    assert counts == Counter({command_id: 1 for command_id in command_ids})
    assert Task.objects.filter(func=PROCESS_TASK, success=False).count() == 0
    assert OrmQ.objects.count() == 0


def test_qcluster_orders_each_deal_once(redis_db, demo_config, processes, tmp_path):
    deals = won_deals(50, first_id=800_001, seed=21)
    processes.append(start_qcluster("qcluster", tmp_path, broker_env()))
    producer = start_producer("producer", tmp_path, 50, 800_001, seed=21)
    processes.append(producer)
    assert producer.wait(DEADLINE) == 0, producer.stderr_tail()
    assert producer.result() == {"broker": "Redis", "statuses": {"accepted": 50}}

    wait_until(lambda: all_tasks_done(50), DEADLINE, processes[:1], "50 orders")

    assert_each_deal_ordered_once(deals)
    assert Task.objects.filter(func=PROCESS_TASK).count() == 50
    assert redis_db.llen(QUEUE_KEY) == 0


def test_two_qclusters_run_each_command_once(
    redis_db, demo_config, processes, tmp_path
):
    deals = won_deals(60, first_id=900_001, seed=22)
    # Two producers receive the same 60 deliveries at once, as a CRM that
    # retries before the first response arrives would send them.
    producers = [
        start_producer(f"producer-{n}", tmp_path, 60, 900_001, 22) for n in "ab"
    ]
    processes.extend(producers)
    statuses = Counter()
    for producer in producers:
        assert producer.wait(DEADLINE) == 0, producer.stderr_tail()
        result = producer.result()
        assert result["broker"] == "Redis"
        statuses.update(result["statuses"])
    assert statuses == {"accepted": 60, "duplicate": 60}
    # NOTE: the clusters start only after the producers because processing a
    # change locks the connector row (test_receive_not_blocked_by_processing),
    # and receives that race with it can deadlock.
    assert redis_db.llen(QUEUE_KEY) == 60

    clusters = [
        start_qcluster(n, tmp_path, broker_env()) for n in ("qcluster-a", "qcluster-b")
    ]
    processes.extend(clusters)
    wait_until(lambda: all_tasks_done(60), DEADLINE, clusters, "60 orders")

    assert_each_deal_ordered_once(deals)
    assert InboundEvent.objects.count() == 60
    assert LedgerEntry.objects.filter(step="duplicate").count() == 60
    assert Task.objects.filter(func=PROCESS_TASK).count() == 60
