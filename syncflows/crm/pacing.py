"""Pacing of CRM API calls, shared by the worker processes of a deployment.

Each call first reserves the next free slot of its connector in one atomic
step, then sleeps outside any lock until the slot starts. Slots are
``slot_interval(rate)`` apart. A 429 or REQUEST_LIMIT_EXCEEDED moves the
connector's block to the end of the CRM's Retry-After, and no slot starts
before the block ends, in any process.

Where the slots are kept, with ``MESHLINE_CRM_PACER=auto`` (the default):

- in the broker's Redis when ``Q_BROKER`` is a Redis URL, changed by Lua
  scripts that read the Redis server's clock, so processes on several hosts
  share one clock;
- else, on PostgreSQL, in the connector's ``syncflows_crmpace`` row, changed
  by one ``UPDATE ... RETURNING`` on the pacer's own autocommit connection
  with the database server's clock. The row lock lasts that one statement
  and is never part of the pipeline's record-locked transaction;
- else (SQLite, the embedded default) in this process only. A write on a
  second SQLite connection would wait for the pipeline's own open write
  transaction, so SQLite cannot share the pace.

``MESHLINE_CRM_PACER=process`` keeps the slots in each process on any set-up.
When Redis or PostgreSQL fails, the call is paced in its own process and a
warning is logged.
"""

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import redis
from django.conf import settings
from django.db import connections
from django.utils import timezone

from syncflows.crm.errors import CrmError

logger = logging.getLogger(__name__)

# Calls ``rate`` slots apart are 1 s plus this apart, so that delays of up to
# this many seconds between the pacer and the CRM's clock (sleeping, sending,
# the network) cannot put more than ``rate`` calls into one second there.
DELAY_ALLOWANCE_SECONDS = 0.1
# A wait longer than this is logged at most once per LOG_EVERY_SECONDS for each
# connector and cause (pace or 429) in each process. The message counts the
# waits left unlogged since the last one.
LOG_WAIT_SECONDS = 1.0
LOG_EVERY_SECONDS = 60.0
# A Redis key outlives its last slot or block by this many milliseconds.
REDIS_KEEP_MS = 60_000
# Timeout of each Redis or PostgreSQL step of the pacer, in seconds.
STORE_TIMEOUT_SECONDS = 5


def sleep(seconds: float) -> None:
    """Wait; tests replace this function to record the waits instead."""
    time.sleep(seconds)


def clock() -> float:
    """Return the clock of the in-process pacer; tests replace it."""
    return time.monotonic()


def slot_interval(rate: float) -> float:
    """Return the seconds between two slots at ``rate`` calls per second."""
    return (1 + DELAY_ALLOWANCE_SECONDS) / rate if rate > 0 else 0.0


@dataclass(frozen=True)
class Slot:
    """The result of one reservation."""

    wait: float  # seconds from the reservation until the slot starts
    blocked: bool  # a 429 block, not the pace, sets the start
    reserved: bool  # False when ``wait`` exceeded the maximum and nothing was taken


class ProcessStore:
    """Slots kept in this process, on the replaceable ``clock()``."""

    name = "process"

    def __init__(self):
        self.lock = threading.Lock()
        self.next_at: dict[int, float] = {}
        self.blocked: dict[int, float] = {}

    def reserve(self, connector_id: int, interval: float, max_wait: float) -> Slot:
        with self.lock:
            now = clock()
            block_end = self.blocked.get(connector_id, -math.inf)
            start = max(now, self.next_at.get(connector_id, -math.inf), block_end)
            blocked = block_end > now and block_end == start
            if start - now > max_wait:
                return Slot(start - now, blocked, reserved=False)
            self.next_at[connector_id] = start + interval
        return Slot(start - now, blocked, reserved=True)

    def block(self, connector_id: int, seconds: float) -> None:
        with self.lock:
            until = clock() + seconds
            if until > self.blocked.get(connector_id, -math.inf):
                self.blocked[connector_id] = until

    def block_remaining(self, connector_id: int) -> float:
        with self.lock:
            return max(0.0, self.blocked.get(connector_id, -math.inf) - clock())

    def blocked_until(self, connector_ids) -> dict:
        """Return nothing: the page's process does not share the workers' blocks."""
        return {}

    def clear(self, connector_ids=None) -> None:
        with self.lock:
            if connector_ids is None:
                self.next_at.clear()
                self.blocked.clear()
                return
            for connector_id in connector_ids:
                self.next_at.pop(connector_id, None)
                self.blocked.pop(connector_id, None)

    def close(self) -> None:
        pass


# Both scripts read the Redis server's clock with TIME and keep microseconds
# since the epoch, which a Lua number (a double) holds exactly until 2255.
# string.format writes them in full: Redis would write a number argument with
# only 14 significant digits. Writing after TIME needs Redis 5 or later, which
# replicates a script's effects instead of the script.
_REDIS_RESERVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'next_at', 'blocked_until')
local next_at = tonumber(state[1]) or 0
local blocked = tonumber(state[2]) or 0
local start = math.max(now, next_at, blocked)
local by_block = 0
if blocked > now and blocked == start then by_block = 1 end
if start - now > max_wait then return {start - now, by_block, 0} end
local new_next = start + interval
redis.call('HSET', KEYS[1], 'next_at', string.format('%.0f', new_next))
local keep = math.floor(math.max(new_next, blocked) / 1000) + tonumber(ARGV[3])
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', keep))
return {start - now, by_block, 1}
"""

_REDIS_BLOCK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 'next_at', 'blocked_until')
local next_at = tonumber(state[1]) or 0
local blocked = math.max(tonumber(state[2]) or 0, now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'blocked_until', string.format('%.0f', blocked))
local keep = math.floor(math.max(next_at, blocked) / 1000) + tonumber(ARGV[2])
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', keep))
return 1
"""


_REDIS_BLOCK_REMAINING = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local blocked = tonumber(redis.call('HGET', KEYS[1], 'blocked_until')) or 0
return math.max(0, blocked - now)
"""


class RedisStore:
    """Slots kept in a Redis hash per connector, changed only by Lua scripts."""

    name = "redis"

    def __init__(self, url, prefix: str):
        options = {
            "socket_timeout": STORE_TIMEOUT_SECONDS,
            "socket_connect_timeout": STORE_TIMEOUT_SECONDS,
        }
        if isinstance(url, dict):
            self.client = redis.Redis(**{**options, **url})
        else:
            self.client = redis.Redis.from_url(url, **options)
        self.prefix = prefix
        self._reserve = self.client.register_script(_REDIS_RESERVE)
        self._block = self.client.register_script(_REDIS_BLOCK)
        self._block_remaining = self.client.register_script(_REDIS_BLOCK_REMAINING)

    def key(self, connector_id: int) -> str:
        return f"{self.prefix}:crm-pace:{connector_id}"

    def reserve(self, connector_id: int, interval: float, max_wait: float) -> Slot:
        wait, blocked, reserved = self._reserve(
            keys=[self.key(connector_id)],
            args=[_micros(interval), _micros(max_wait), REDIS_KEEP_MS],
        )
        return Slot(int(wait) / 1_000_000, bool(blocked), bool(reserved))

    def block(self, connector_id: int, seconds: float) -> None:
        self._block(
            keys=[self.key(connector_id)], args=[_micros(seconds), REDIS_KEEP_MS]
        )

    def block_remaining(self, connector_id: int) -> float:
        return int(self._block_remaining(keys=[self.key(connector_id)])) / 1_000_000

    def blocked_until(self, connector_ids) -> dict:
        connector_ids = list(connector_ids)
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for connector_id in connector_ids:
            pipe.hget(self.key(connector_id), "blocked_until")
        (seconds, micros), *values = pipe.execute()
        now = seconds * 1_000_000 + micros
        blocks = {}
        for connector_id, value in zip(connector_ids, values, strict=True):
            if value is not None and int(value) > now:
                moment = datetime.fromtimestamp(int(value) / 1_000_000, UTC)
                blocks[connector_id] = moment
        return blocks

    def clear(self, connector_ids=None) -> None:
        if connector_ids is None:
            keys = list(self.client.scan_iter(match=self.key("*")))
        else:
            keys = [self.key(connector_id) for connector_id in connector_ids]
        if keys:
            self.client.delete(*keys)

    def close(self) -> None:
        self.client.close()


# The SET expressions all read the row as it was before this UPDATE, so
# last_start_at is the slot's start, and the CASE takes the slot only when
# it starts within the maximum wait. now() is the same in every expression.
_PG_RESERVE = """
UPDATE syncflows_crmpace SET
    last_start_at = GREATEST(now(), next_slot_at, blocked_until),
    next_slot_at = CASE
        WHEN GREATEST(now(), next_slot_at, blocked_until)
            <= now() + %(max_wait)s * INTERVAL '1 second'
        THEN GREATEST(now(), next_slot_at, blocked_until)
            + %(interval)s * INTERVAL '1 second'
        ELSE next_slot_at
    END
WHERE connector_id = %(connector_id)s
RETURNING
    EXTRACT(EPOCH FROM last_start_at - now()),
    blocked_until > now() AND blocked_until = last_start_at,
    last_start_at <= now() + %(max_wait)s * INTERVAL '1 second'
"""

_PG_BLOCK = """
UPDATE syncflows_crmpace
SET blocked_until = GREATEST(blocked_until, now() + %(seconds)s * INTERVAL '1 second')
WHERE connector_id = %(connector_id)s
RETURNING 1
"""

_PG_BLOCK_REMAINING = """
SELECT GREATEST(0, EXTRACT(EPOCH FROM blocked_until - now()))
FROM syncflows_crmpace
WHERE connector_id = %(connector_id)s
"""

_PG_INSERT = """
INSERT INTO syncflows_crmpace (connector_id, next_slot_at, blocked_until, last_start_at)
VALUES (%(connector_id)s, now(), now(), now())
ON CONFLICT (connector_id) DO NOTHING
"""


class PostgresStore:
    """Slots kept in ``syncflows_crmpace``, one row per connector.

    The store has one autocommit connection per process, apart from Django's.
    So the pace row is locked only for one statement of that connection,
    never by the pipeline's open transaction, and the store never waits for
    that transaction's locks. A lock makes the threads of a process take
    turns on the connection.
    """

    name = "postgresql"

    def __init__(self, alias: str = "default"):
        self.alias = alias
        self.lock = threading.Lock()
        self.connection = None
        self.pid = None

    def reserve(self, connector_id: int, interval: float, max_wait: float) -> Slot:
        params = {
            "connector_id": connector_id,
            # A huge float has no interval form; a day is beyond any max wait.
            "max_wait": min(max_wait, 86_400.0),
            "interval": interval,
        }
        wait, blocked, reserved = self._update(_PG_RESERVE, params)
        return Slot(float(wait), bool(blocked), bool(reserved))

    def block(self, connector_id: int, seconds: float) -> None:
        self._update(_PG_BLOCK, {"connector_id": connector_id, "seconds": seconds})

    def block_remaining(self, connector_id: int) -> float:
        with self.lock, self._cursor() as cursor:
            cursor.execute(_PG_BLOCK_REMAINING, {"connector_id": connector_id})
            row = cursor.fetchone()
        return float(row[0]) if row else 0.0

    def blocked_until(self, connector_ids) -> dict:
        from syncflows.models import CrmPace

        rows = CrmPace.objects.using(self.alias).filter(
            connector_id__in=list(connector_ids), blocked_until__gt=timezone.now()
        )
        return dict(rows.values_list("connector_id", "blocked_until"))

    def clear(self, connector_ids=None) -> None:
        with self.lock, self._cursor() as cursor:
            if connector_ids is None:
                cursor.execute("DELETE FROM syncflows_crmpace")
            else:
                cursor.execute(
                    "DELETE FROM syncflows_crmpace WHERE connector_id = ANY(%s)",
                    [list(connector_ids)],
                )

    def close(self) -> None:
        with self.lock:
            if self.connection is not None and self.pid == os.getpid():
                self.connection.close()
            self.connection = None

    def _update(self, sql: str, params: dict):
        """Run ``sql`` on the connector's row, creating the row when it is missing."""
        with self.lock, self._cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
            if row is None:
                cursor.execute(_PG_INSERT, params)
                cursor.execute(sql, params)
                row = cursor.fetchone()
            return row

    def _cursor(self):
        if self.pid != os.getpid():
            # A connection inherited through fork() belongs to the parent:
            # closing it here would end the parent's session too.
            self.connection, self.pid = None, os.getpid()
        if self.connection is None or self.connection.closed:
            self.connection = self._connect()
        return _ClosingOnError(self)

    def _connect(self):
        params = dict(connections[self.alias].get_connection_params())
        # Django's cursor class and adapters are for its own connections.
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.setdefault("application_name", "meshline crm pacer")
        params.setdefault("connect_timeout", STORE_TIMEOUT_SECONDS)
        connection = psycopg.connect(**params, autocommit=True)
        connection.execute(f"SET statement_timeout = '{STORE_TIMEOUT_SECONDS}s'")
        connection.execute(f"SET lock_timeout = '{STORE_TIMEOUT_SECONDS}s'")
        return connection


class _ClosingOnError:
    """A cursor of the store's connection that drops the connection on an
    error, so that the next step reconnects instead of reusing a broken one."""

    def __init__(self, store: PostgresStore):
        self.store = store
        self.cursor = store.connection.cursor()

    def __enter__(self):
        return self.cursor

    def __exit__(self, exc_type, exc, traceback):
        self.cursor.close()
        if exc_type is not None and issubclass(exc_type, psycopg.Error):
            try:
                self.store.connection.close()
            finally:
                self.store.connection = None
        return False


def _micros(seconds: float) -> int:
    return round(min(seconds, 86_400.0) * 1_000_000)


# Choosing the store

_process_store = ProcessStore()
_shared_stores: dict = {}
_stores_lock = threading.Lock()


def current_store():
    """Return the store that ``MESHLINE_CRM_PACER`` and the set-up select."""
    if getattr(settings, "MESHLINE_CRM_PACER", "auto") == "process":
        return _process_store
    cluster = getattr(settings, "Q_CLUSTER", {}) or {}
    if cluster.get("redis"):
        key = ("redis", repr(cluster["redis"]))
        return _shared(key, lambda: RedisStore(cluster["redis"], cluster["name"]))
    database = connections["default"]
    if database.vendor == "postgresql":
        key = ("postgresql", database.settings_dict["NAME"])
        return _shared(key, PostgresStore)
    # NOTE: on SQLite each worker process keeps its own pace, so qcluster's
    # Q_WORKERS processes (2 by default) may together send up to Q_WORKERS
    # times the connector's rate. Set Q_WORKERS=1 to hold the rate there.
    return _process_store


def _shared(key, build):
    with _stores_lock:
        if key not in _shared_stores:
            _shared_stores[key] = build()
        return _shared_stores[key]


def reset_pacers() -> None:
    """Forget this process's slots and close the shared stores' connections.

    The slots kept in Redis or PostgreSQL stay; ``current_store().clear()``
    removes them.
    """
    _process_store.clear()
    with _log_lock:
        _last_logged.clear()
        _unlogged.clear()
    with _stores_lock:
        stores = list(_shared_stores.values())
        _shared_stores.clear()
    for store in stores:
        store.close()


def blocked_until(connector_ids) -> dict:
    """Return {connector id: aware datetime} of the connectors blocked after a 429."""
    try:
        return current_store().blocked_until(connector_ids)
    except (redis.RedisError, psycopg.Error) as exc:
        logger.warning("Could not read the CRM pacer's blocks: %s", exc)
        return {}


# The pacer of one connector


class Pacer:
    """Spaces the calls of one connector to at most ``rate`` per second, in
    every process that uses the same store, and delays them after a 429."""

    def __init__(self, connector_id: int, rate: float):
        self.connector_id = connector_id
        self.rate = rate
        self.interval = slot_interval(rate)

    def wait(self, max_wait: float = math.inf) -> float:
        """Sleep until this call's slot starts; return the seconds waited.

        A 429 that another call reports during the sleep blocks this call
        too, so it then takes a new slot after the block. Raises a transient
        ``rate_limited`` CrmError, without sleeping or taking a slot, when
        the wait would exceed ``max_wait`` seconds in all.
        """
        waited = 0.0
        while True:
            slot = self._reserve(max_wait - waited)
            if not slot.reserved:
                raise self._too_long(slot, waited, max_wait)
            if slot.wait > LOG_WAIT_SECONDS:
                _log_wait(self, slot)
            if slot.wait <= 0:
                return waited
            sleep(slot.wait)
            waited += slot.wait
            if self._block_remaining() <= 0:
                return waited

    def block_for(self, seconds: float) -> None:
        """Hold every call of this connector for ``seconds``, in every process."""
        try:
            current_store().block(self.connector_id, seconds)
        except (redis.RedisError, psycopg.Error) as exc:
            _log_store_error(self.connector_id, exc)
            _process_store.block(self.connector_id, seconds)

    def _too_long(self, slot: Slot, waited: float, max_wait: float) -> CrmError:
        cause = "held after a 429" if slot.blocked else "paced"
        return CrmError(
            "rate_limited",
            f"Calls to the CRM of connector {self.connector_id} are {cause}: this "
            f"call would wait {waited + slot.wait:.0f} s, longer than the "
            f"connector's maximum wait of {max_wait:.0f} s.",
            transient=True,
            retry_after=slot.wait,
        )

    def _block_remaining(self) -> float:
        try:
            return current_store().block_remaining(self.connector_id)
        except (redis.RedisError, psycopg.Error) as exc:
            _log_store_error(self.connector_id, exc)
            return _process_store.block_remaining(self.connector_id)

    def _reserve(self, max_wait: float) -> Slot:
        store = current_store()
        try:
            return store.reserve(self.connector_id, self.interval, max_wait)
        except (redis.RedisError, psycopg.Error) as exc:
            _log_store_error(self.connector_id, exc)
            return _process_store.reserve(self.connector_id, self.interval, max_wait)


def pacer_for(access) -> Pacer:
    """Return the pacer of ``access`` (a ConnectorApiAccess row)."""
    return Pacer(access.connector_id, float(access.requests_per_second or 0))


# Logging, at most once per LOG_EVERY_SECONDS for each connector and message kind

_last_logged: dict[tuple, float] = {}
_unlogged: dict[tuple, int] = {}
_log_lock = threading.Lock()


def _should_log(key: tuple) -> int | None:
    """Return the count of messages skipped since the last one, or None to skip."""
    now = time.monotonic()
    with _log_lock:
        last = _last_logged.get(key)
        if last is not None and now - last < LOG_EVERY_SECONDS:
            _unlogged[key] = _unlogged.get(key, 0) + 1
            return None
        _last_logged[key] = now
        return _unlogged.pop(key, 0)


def _log_wait(pacer: Pacer, slot: Slot) -> None:
    skipped = _should_log(("wait", pacer.connector_id, slot.blocked))
    if skipped is None:
        return
    reason = (
        "held by the CRM's Retry-After after a 429"
        if slot.blocked
        else f"paced at {pacer.rate:g} calls per second"
    )
    logger.log(
        logging.WARNING if slot.blocked else logging.INFO,
        "CRM call of connector %s waits %.1f s: %s (%s more waits over %.0f s "
        "since the last message)",
        pacer.connector_id,
        slot.wait,
        reason,
        skipped,
        LOG_WAIT_SECONDS,
    )


def _log_store_error(connector_id: int, exc: Exception) -> None:
    skipped = _should_log(("store", connector_id))
    if skipped is None:
        return
    logger.warning(
        "The shared CRM pacer failed for connector %s (%s: %s), so its calls are "
        "paced in this process only until the shared pacer works again (%s more "
        "failures since the last message)",
        connector_id,
        type(exc).__name__,
        exc,
        skipped,
    )
