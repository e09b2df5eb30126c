"""The CRM pacer: slots and 429 blocks shared by worker processes and threads.

The cross-process tests start real reader processes (``tests.pace_worker``)
that call a fake Pipedrive API on 127.0.0.1 through the real CRM client, and
check the fake's own arrival times. They run once with the pace in Redis
(``Q_BROKER`` set to Redis database 12, ``MESHLINE_TEST_PACER_REDIS_URL``)
and once in PostgreSQL (``Q_BROKER=orm``). Only that Redis database is
flushed.
"""

import gc
import logging
import os
import sys
import time
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from django.utils import timezone

from syncflows.crm import CrmError, ReadRequest, get_client, pacing
from syncflows.crm import http as crm_http
from syncflows.models import Connector, ConnectorApiAccess
from tests.fakes.pipedrive_api import FakePipedrive
from tests.workers import (
    Process,
    require_postgresql,
    stop_all,
    subprocess_env,
    wait_for_files,
    wait_until,
)

REDIS_URL = os.environ.get("MESHLINE_TEST_PACER_REDIS_URL", "redis://127.0.0.1:6379/12")
DEADLINE = 90  # seconds
RATE = 5  # calls per second, the configured rate of the cross-process tests
RETRY_AFTER = 3  # seconds, the Retry-After of the fake's 429
DEALS = ("1001", "1002")
# Connector ids of the store tests, which need no connector rows.
CONNECTOR = 990_001
OTHER_CONNECTOR = 990_002


def max_calls_per_second(times) -> int:
    """Return the maximum number of calls in any window [t, t + 1 s).

    Some window with the maximum starts at a call, so only those windows are
    counted.
    """
    times = sorted(times)
    maximum, end = 0, 0
    for first, start in enumerate(times):
        while end < len(times) and times[end] < start + 1.0:
            end += 1
        maximum = max(maximum, end - first)
    return maximum


# Fixtures


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
def fake_clock(monkeypatch, settings):
    """Run the in-process pacer on a clock that moves only when it sleeps;
    return the list of its sleeps."""
    settings.MESHLINE_CRM_PACER = "process"
    sleeps, now = [], [1000.0]

    def fake_sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(pacing, "sleep", fake_sleep)
    monkeypatch.setattr(crm_http, "sleep", fake_sleep)
    monkeypatch.setattr(pacing, "clock", lambda: now[0])
    pacing.reset_pacers()
    yield sleeps
    pacing.reset_pacers()


@pytest.fixture(params=["process", "redis", "postgresql"])
def store(request, db):
    """Each store, built directly, with its slots removed before and after."""
    if request.param == "process":
        built = pacing.ProcessStore()
    elif request.param == "redis":
        request.getfixturevalue("redis_db")
        built = pacing.RedisStore(REDIS_URL, "meshline-test")
    else:
        require_postgresql()
        built = pacing.PostgresStore()
    built.clear([CONNECTOR, OTHER_CONNECTOR])
    yield built
    built.clear([CONNECTOR, OTHER_CONNECTOR])
    built.close()


@pytest.fixture
def processes():
    started = []
    yield started
    stop_all(started)


@pytest.fixture
def no_collection_pauses():
    """Turn off garbage collection in this process, where the fake CRM runs.

    A collection pause would delay the fake's timestamps of the calls that
    arrive meanwhile and bunch them together, as no real CRM would.
    """
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.fixture(params=["redis", "postgresql"])
def shared_pacer_env(request):
    """The environment of reader processes that share the pace in Redis or
    PostgreSQL, as deployed workers do with each ``Q_BROKER``."""
    require_postgresql()
    broker = "orm"
    if request.param == "redis":
        request.getfixturevalue("redis_db")
        broker = REDIS_URL
    return subprocess_env(Q_BROKER=broker, MESHLINE_CRM_PACER="auto", LOG_LEVEL="INFO")


def pipedrive_access(fake, rate) -> ConnectorApiAccess:
    connector = Connector.objects.create(
        slug="pipedrive-paced", name="Pipedrive (paced)", kind="pipedrive"
    )
    for deal in DEALS:
        fake.add_deal(deal, {"title": f"FAKE deal {deal}", "status": "won"})
    return ConnectorApiAccess.objects.create(
        connector=connector,
        crm="pipedrive",
        base_url=fake.url,
        token_url=f"{fake.url}{fake.token_path}",
        credentials=fake.credentials(),
        requests_per_second=Decimal(rate),
    )


def start_readers(tmp_path, env, access, *, reads, threads) -> dict:
    """Start one reader process per deal, each ready but waiting for its go file."""
    readers = {}
    for deal in DEALS:
        args = [sys.executable, "-m", "tests.pace_worker"]
        args += ["--connector-id", str(access.connector_id), "--deal", deal]
        args += ["--reads", str(reads), "--threads", str(threads)]
        args += ["--ready-file", str(tmp_path / f"{deal}.ready")]
        args += ["--go-file", str(tmp_path / f"{deal}.go")]
        readers[deal] = Process(f"reader-{deal}", args, env, tmp_path)
    ready = [tmp_path / f"{deal}.ready" for deal in DEALS]
    wait_for_files(ready, list(readers.values()), DEADLINE)
    return readers


def go(tmp_path, deal) -> float:
    (tmp_path / f"{deal}.go").touch()
    return time.monotonic()


# The pacer of one connector, in one process


def test_pacer_spaces_calls(fake_clock):
    pacer = pacing.Pacer(CONNECTOR, rate=2)

    waits = [pacer.wait() for _ in range(3)]

    assert waits == pytest.approx([0, 0.55, 0.55])
    assert fake_clock == pytest.approx([0.55, 0.55])


def test_pacer_holds_after_rate_limit(fake_clock):
    pacer = pacing.Pacer(CONNECTOR, rate=0)

    pacer.block_for(3)

    assert pacer.wait() == 3
    assert pacer.wait() == 0


def test_pacer_rejects_wait_over_maximum(fake_clock):
    pacer = pacing.Pacer(CONNECTOR, rate=0)
    pacer.block_for(45)

    with pytest.raises(CrmError) as raised:
        pacer.wait(max_wait=30)

    assert raised.value.reason_code == "rate_limited"
    assert raised.value.transient is True
    assert raised.value.retry_after == 45
    assert raised.value.message == (
        f"Calls to the CRM of connector {CONNECTOR} are held after a 429: this "
        "call would wait 45 s, longer than the connector's maximum wait of 30 s."
    )
    assert fake_clock == []


def test_pacer_waits_again_after_block_in_sleep(fake_clock, monkeypatch):
    pacer = pacing.Pacer(CONNECTOR, rate=0.5)
    sleep = pacing.sleep

    def sleep_and_block_once(seconds):
        # Another call gets a 429 with Retry-After: 5 while this one sleeps.
        if not fake_clock:
            pacer.block_for(5)
        sleep(seconds)

    pacer.wait()
    monkeypatch.setattr(pacing, "sleep", sleep_and_block_once)

    waited = pacer.wait()

    assert fake_clock == pytest.approx([2.2, 2.8])
    assert waited == pytest.approx(5)


def test_pacer_logs_long_waits_once(fake_clock, caplog):
    pacer = pacing.Pacer(CONNECTOR, rate=0.25)
    caplog.set_level(logging.INFO, logger="syncflows.crm.pacing")

    waits = [pacer.wait() for _ in range(4)]

    assert waits == pytest.approx([0, 4.4, 4.4, 4.4])
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        f"CRM call of connector {CONNECTOR} waits 4.4 s: paced at 0.25 calls per "
        "second (0 more waits over 1 s since the last message)"
    ]


def test_read_deferred_when_blocked_too_long(fake_clock, db):
    with FakePipedrive() as fake:
        access = pipedrive_access(fake, 0)
        pacing.pacer_for(access).block_for(120)
        client = get_client(access)

        with pytest.raises(CrmError) as raised:
            client.read("deal", DEALS[0], ReadRequest())

        assert raised.value.reason_code == "rate_limited"
        assert raised.value.retry_after >= 120
        assert fake.arrivals == []
        assert client.stats["requests"] == 0
        assert client.stats["retry_after"] == 120
        assert fake_clock == []


# Choosing the store


@pytest.fixture
def fresh_stores():
    pacing.reset_pacers()
    yield
    pacing.reset_pacers()


def test_store_is_redis_with_redis_broker(settings, fresh_stores):
    settings.Q_CLUSTER = {"name": "meshline", "redis": REDIS_URL}

    assert pacing.current_store().name == "redis"


def test_store_is_postgresql_with_orm_broker(settings, fresh_stores):
    require_postgresql()
    settings.Q_CLUSTER = {"name": "meshline", "orm": "default"}

    assert pacing.current_store().name == "postgresql"


def test_store_is_process_when_configured(settings, fresh_stores):
    settings.MESHLINE_CRM_PACER = "process"
    settings.Q_CLUSTER = {"name": "meshline", "redis": REDIS_URL}

    assert pacing.current_store().name == "process"


def test_unreachable_redis_paces_in_process(settings, fresh_stores, caplog):
    # Nothing listens on port 1 of 127.0.0.1, so the connection is refused.
    settings.Q_CLUSTER = {"name": "meshline", "redis": "redis://127.0.0.1:1/0"}
    pacer = pacing.Pacer(CONNECTOR, rate=0)

    pacer.block_for(0)
    wait = pacer.wait()

    assert wait == 0

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith(
        f"The shared CRM pacer failed for connector {CONNECTOR} (ConnectionError"
    )


# Each store's slots and blocks


def test_store_spaces_slots(store):
    first = store.reserve(CONNECTOR, 100, max_wait=1000)
    too_far = store.reserve(CONNECTOR, 100, max_wait=50)
    second = store.reserve(CONNECTOR, 100, max_wait=150)
    third = store.reserve(CONNECTOR, 100, max_wait=150)

    assert first == pacing.Slot(wait=0, blocked=False, reserved=True)
    assert too_far.reserved is False
    assert second.reserved is True
    assert 50 < second.wait <= 100
    # The second slot took 100 s more, so the third starts after 150 s.
    assert third.reserved is False
    assert store.reserve(OTHER_CONNECTOR, 100, max_wait=0).reserved is True


def test_store_holds_slots_after_block(store):
    store.reserve(CONNECTOR, 0, max_wait=0)

    store.block(CONNECTOR, 60)
    store.block(CONNECTOR, 10)  # a shorter block keeps the longer one
    too_far = store.reserve(CONNECTOR, 0, max_wait=30)
    after_block = store.reserve(CONNECTOR, 0, max_wait=90)

    assert too_far.reserved is False
    assert too_far.blocked is True
    assert after_block.reserved is True
    assert after_block.blocked is True
    assert 30 < after_block.wait <= 60
    assert store.reserve(OTHER_CONNECTOR, 0, max_wait=0).reserved is True


def test_store_reports_block_remaining(store):
    store.block(CONNECTOR, 60)
    store.reserve(OTHER_CONNECTOR, 0, max_wait=0)

    remaining = store.block_remaining(CONNECTOR)

    assert 30 < remaining <= 60
    assert store.block_remaining(OTHER_CONNECTOR) == 0
    assert store.block_remaining(990_003) == 0


def test_store_reports_blocks(store):
    store.block(CONNECTOR, 60)
    store.reserve(OTHER_CONNECTOR, 0, max_wait=0)

    blocks = store.blocked_until([CONNECTOR, OTHER_CONNECTOR])

    if store.name == "process":
        # The web process does not share a worker process's memory.
        assert blocks == {}
        return
    assert list(blocks) == [CONNECTOR]
    assert blocks[CONNECTOR] > timezone.now() + timedelta(seconds=30)


def test_health_page_shows_shared_block(db, client, settings):
    from django.contrib.auth.models import Group

    from tests.conftest import make_user

    require_postgresql()
    settings.Q_CLUSTER = {"name": "meshline", "orm": "default"}
    Group.objects.get_or_create(name="Viewer")
    with FakePipedrive() as fake:
        access = pipedrive_access(fake, RATE)
    store = pacing.current_store()
    try:
        pacing.pacer_for(access).block_for(60)
        client.force_login(make_user("vera", "Viewer"))

        response = client.get("/connectors/health/")
    finally:
        store.clear([access.connector_id])
        pacing.reset_pacers()

    assert response.status_code == 200
    rows = {row["connector"].slug: row for row in response.context["rows"]}
    assert rows["pipedrive-paced"]["rate_limited"] is True
    assert rows["pipedrive-paced"]["health"] is None
    assert response.context["pace_shared"] is True
    assert "Limited until" in response.content.decode()


# Real processes against one fake CRM


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_processes_share_rate(
    shared_pacer_env, processes, tmp_path, no_collection_pauses
):
    reads, threads = 6, 2
    with FakePipedrive() as fake:
        access = pipedrive_access(fake, RATE)
        readers = start_readers(
            tmp_path, shared_pacer_env, access, reads=reads, threads=threads
        )
        processes.extend(readers.values())
        for deal in DEALS:
            go(tmp_path, deal)
        for reader in readers.values():
            assert reader.wait(DEADLINE) == 0, reader.stderr_tail()
        arrivals = list(fake.arrivals)

    calls = reads * threads
    summary = {"read": calls, "requests": calls, "rate_limited": 0, "retries": 0}
    assert [reader.result() for reader in readers.values()] == [summary, summary]
    by_deal = {
        deal: [t for t, _, path in arrivals if path.endswith(deal)] for deal in DEALS
    }
    assert [len(by_deal[deal]) for deal in DEALS] == [calls, calls]
    # The two processes called at the same time, not one after the other.
    assert min(by_deal["1002"]) < max(by_deal["1001"])
    assert min(by_deal["1001"]) < max(by_deal["1002"])
    times = sorted(t for t, _, _ in arrivals)
    offsets = [round(t - times[0], 3) for t in times]
    assert max_calls_per_second(times) == RATE, f"calls at {offsets} s"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_process_pacer_exceeds_rate(processes, tmp_path, no_collection_pauses):
    """The control: with the pace kept in each process, two processes together
    exceed the rate, so the test above can fail."""
    require_postgresql()
    env = subprocess_env(Q_BROKER="orm", MESHLINE_CRM_PACER="process")
    with FakePipedrive() as fake:
        access = pipedrive_access(fake, RATE)
        readers = start_readers(tmp_path, env, access, reads=12, threads=1)
        processes.extend(readers.values())
        for deal in DEALS:
            go(tmp_path, deal)
        for reader in readers.values():
            assert reader.wait(DEADLINE) == 0, reader.stderr_tail()
        arrivals = list(fake.arrivals)

    assert len(arrivals) == 24
    assert max_calls_per_second(t for t, _, _ in arrivals) > RATE


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_429_in_one_process_holds_other(
    shared_pacer_env, processes, tmp_path, no_collection_pauses
):
    first, second = DEALS
    with FakePipedrive() as fake:
        access = pipedrive_access(fake, RATE)
        # The first call of the first process gets a 429.
        fake.rate_limit(f"/api/v1/deals/{first}", retry_after=RETRY_AFTER)
        readers = start_readers(tmp_path, shared_pacer_env, access, reads=1, threads=1)
        processes.extend(readers.values())
        go(tmp_path, first)
        wait_until(lambda: fake.arrivals, DEADLINE, processes, "the first call")
        second_started = go(tmp_path, second)
        for reader in readers.values():
            assert reader.wait(DEADLINE) == 0, reader.stderr_tail()
        arrivals = list(fake.arrivals)

    rate_limited_at, _, path = arrivals[0]
    assert path == f"/api/v1/deals/{first}"
    # The second process started while the first one's block was on ...
    assert second_started < rate_limited_at + RETRY_AFTER
    # ... yet no call reached the CRM before the Retry-After had passed.
    held_until = rate_limited_at + RETRY_AFTER
    assert [path for t, _, path in arrivals[1:] if t < held_until] == []
    assert sorted(path for _, _, path in arrivals[1:]) == [
        f"/api/v1/deals/{first}",
        f"/api/v1/deals/{second}",
    ]
    assert readers[first].result() == {
        "read": 1,
        "requests": 2,
        "rate_limited": 1,
        "retries": 1,
    }
    assert readers[second].result() == {
        "read": 1,
        "requests": 1,
        "rate_limited": 0,
        "retries": 0,
    }
    log = readers[second].stderr_path.read_text(encoding="utf-8")
    assert f"CRM call of connector {access.connector_id} waits " in log
    assert "held by the CRM's Retry-After after a 429" in log
    for reader in readers.values():
        assert fake.api_token not in reader.stderr_path.read_text(encoding="utf-8")


def test_max_calls_per_second_counts_windows():
    assert max_calls_per_second([]) == 0
    assert max_calls_per_second([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert max_calls_per_second([2.0, 0.0, 1.0, 3.0]) == 1
    assert max_calls_per_second([0.0] * 4) == 4
    assert max_calls_per_second([5.0]) == 1
