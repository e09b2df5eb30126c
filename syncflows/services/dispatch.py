"""Claiming and running outbox commands.

Workers claim due commands with ``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL (SQLite serialises writers, so the conditional UPDATE that marks
a row claimed is enough there). A command is not claimable while an older
command of the same record is still open, so one record's commands run in
order while different records run in parallel.
"""

import logging
import os
import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from meshline.fields import reveal
from meshline.logging import log_context
from meshline.shutdown import stop_requested
from syncflows.adapters import AdapterError, CommandData, get_adapter
from syncflows.models import BriefVersion, Command, Destination, LedgerEntry
from syncflows.services import ledger
from syncflows.services.failures import (
    Failure,
    check_dispatch_guards,
    check_dispatch_guards_many,
    report_failure,
    report_success,
    report_successes,
)

logger = logging.getLogger(__name__)
Step = LedgerEntry.Step

# Adapters per thread and destination: an adapter keeps an HTTP session,
# which requests does not document as safe to share between threads.
_local = threading.local()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _adapter_for(destination):
    adapters = getattr(_local, "adapters", None)
    if adapters is None:
        adapters = _local.adapters = {}
    cached = adapters.get(destination.pk)
    if cached is None or cached.destination.settings != destination.settings:
        reveal(destination.credentials)  # an unreadable secret fails here, clearly
        cached = get_adapter(destination)
        adapters[destination.pk] = cached
    return cached


def close_adapters() -> None:
    adapters = getattr(_local, "adapters", {})
    for adapter in adapters.values():
        adapter.close()
    adapters.clear()


def claim(limit: int, worker: str) -> list[int]:
    """Mark up to ``limit`` due commands as sent by ``worker``; return their ids."""
    now = timezone.now()
    older_open = Command.objects.filter(
        ordering_key=OuterRef("ordering_key"),
        id__lt=OuterRef("id"),
        state__in=Command.OPEN_STATES,
    )
    due = (
        Command.objects.filter(
            state__in=[Command.State.PENDING, Command.State.RETRY_SCHEDULED],
            next_attempt_at__lte=now,
        )
        .filter(~Exists(older_open))
        .order_by("next_attempt_at", "id")
    )
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return _claim_returning(due, limit, worker, now)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            return _claim_returning(due, limit, worker, now)
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True, of=("self",))
        ids = list(due.values_list("id", flat=True)[:limit])
        if not ids:
            return []
        Command.objects.filter(
            id__in=ids, state__in=[Command.State.PENDING, Command.State.RETRY_SCHEDULED]
        ).update(state=Command.State.SENT, claimed_at=now, claimed_by=worker)
        claimed = list(
            Command.objects.filter(id__in=ids, state=Command.State.SENT, claimed_by=worker, claimed_at=now)
            .values_list("id", flat=True)
        )
    return claimed


def _claim_returning(due, limit: int, worker: str, now) -> list[int]:
    """Claim with one statement on PostgreSQL: an UPDATE of the rows that a
    locking subquery picks, skipping rows that another worker holds."""
    picked = due.select_for_update(skip_locked=True, of=("self",)).values("id")[:limit]
    # Django compiles FOR UPDATE only inside a transaction. The UPDATE below
    # is one statement, so it needs none of its own: the block sends nothing.
    with transaction.atomic():
        sql, params = picked.query.sql_with_params()
    table = connection.ops.quote_name(Command._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET state = %s, claimed_at = %s, claimed_by = %s "
            f"WHERE id IN ({sql}) RETURNING id",
            [Command.State.SENT, now, worker, *params],
        )
        return sorted(row[0] for row in cursor.fetchall())


def _load_claimed(command_ids, worker: str) -> list:
    """Load the commands that ``worker`` still holds, oldest first.

    The brief versions, with their large mapping and schema, are read once
    each, not once for each command."""
    commands = list(
        Command.objects.select_related("record__connector")
        # The connector's secrets are not needed to send a command.
        .defer("result", "record__field_versions", "record__connector__secrets")
        .filter(pk__in=list(command_ids), state=Command.State.SENT, claimed_by=worker)
        .order_by("id")
    )
    versions = BriefVersion.objects.select_related("brief").in_bulk(
        {command.brief_version_id for command in commands}
    )
    destinations = Destination.objects.in_bulk({command.destination_id for command in commands})
    for command in commands:
        command.brief_version = versions[command.brief_version_id]
        command.destination = destinations[command.destination_id]
    return commands


def _command_data(command) -> CommandData:
    return CommandData(
        idempotency_key=command.idempotency_key,
        command_type=command.command_type,
        payload=command.payload,
        mode=command.mode,
        options={
            "create_missing_customers": command.brief_version.brief.create_missing_customers
        },
    )


def _log_start(command, worker: str) -> None:
    logger.info(
        "Command %s attempt %s started on %s",
        command.pk,
        command.attempts + 1,
        worker,
        extra={"command_id": command.pk},
    )


def _adapter_or_failure(command, worker: str):
    """Return the command's adapter, or fail the command when its destination
    is misconfigured; retrying cannot help until an admin fixes it."""
    try:
        return _adapter_for(command.destination)
    except ImproperlyConfigured as exc:
        error = AdapterError(
            "erp_unavailable",
            f"Destination {command.destination.slug} is misconfigured: {exc} "
            "Fix it in admin, then retry.",
        )
        _fail(command, worker, command.attempts + 1, error)
        return None


def run_command(command_id: int, worker: str) -> str:
    """Run one claimed command to its next state; return that state."""
    with log_context(command_id=command_id):
        return _run_command(command_id, worker)


def _run_command(command_id: int, worker: str) -> str:
    command = Command.objects.select_related("destination", "brief_version__brief", "record").get(
        pk=command_id
    )
    if command.state != Command.State.SENT or command.claimed_by != worker:
        return command.state
    _log_start(command, worker)
    verdict = check_dispatch_guards(command)
    if verdict is not None:
        return _hold(command, worker, *verdict)
    return _run_loaded(command, worker)


def _fail_with(adapter, command, worker: str, exc: Exception) -> str:
    error = adapter.classify(exc)
    if not isinstance(exc, AdapterError):
        logger.exception("Command %s raised an unclassified error", command.pk, exc_info=exc)
    return _fail(command, worker, command.attempts + 1, error)


def run_batch(command_ids, worker: str, pool=None) -> int:
    """Run claimed commands: guards for all at once, then each destination's
    commands through its adapter, a batch at a time where the adapter writes
    batches, and otherwise one command a thread of ``pool``. Return how many
    went to a batch adapter."""
    commands = _load_claimed(command_ids, worker)
    if stop_requested():
        for command in commands:
            release_claim(command.pk, worker)
        return 0

    batched = 0
    for command in commands:
        _log_start(command, worker)
    verdicts = check_dispatch_guards_many(commands)
    by_destination: dict = {}
    for command in commands:
        if command.pk in verdicts:
            with log_context(command_id=command.pk):
                _hold(command, worker, *verdicts[command.pk])
        else:
            by_destination.setdefault(command.destination_id, []).append(command)

    single = []
    for group in by_destination.values():
        adapter = _adapter_or_failure(group[0], worker)
        if adapter is None:
            for command in group[1:]:
                _adapter_or_failure(command, worker)
        elif adapter.batch_size > 1:
            batched += len(group)
            for start in range(0, len(group), adapter.batch_size):
                _run_adapter_batch(adapter, group[start : start + adapter.batch_size], worker)
        else:
            single.extend(group)

    if pool is None:
        for command in single:
            _run_loaded_unless_stopping(command, worker)
    else:
        list(pool.map(lambda command: _run_loaded_in_thread(command, worker), single))
    return batched


def _run_adapter_batch(adapter, commands, worker: str) -> None:
    try:
        outcomes = adapter.run_batch([_command_data(command) for command in commands])
    except Exception as exc:  # the whole batch failed; each command is classified
        outcomes = [exc] * len(commands)
    succeeded = []
    for command, outcome in zip(commands, outcomes):
        if isinstance(outcome, Exception):
            with log_context(command_id=command.pk):
                try:
                    _fail_with(adapter, command, worker, outcome)
                except Exception:
                    logger.exception("Command %s crashed the worker loop", command.pk)
        else:
            succeeded.append((command, outcome))
    if succeeded:
        try:
            _succeed_many(succeeded, worker)
        except Exception:
            # The claims stay; the sweep re-queues the commands, and
            # find_existing then finds their documents.
            logger.exception("Recording %s succeeded command(s) failed", len(succeeded))


def _run_loaded(command, worker: str) -> str:
    """Run a loaded command whose guards have passed."""
    adapter = _adapter_or_failure(command, worker)
    if adapter is None:
        return Command.State.FAILED
    try:
        outcome = adapter.run(_command_data(command))
    except Exception as exc:  # every adapter error is classified, never lost
        return _fail_with(adapter, command, worker, exc)
    return _succeed(command, worker, command.attempts + 1, outcome)


def _run_loaded_unless_stopping(command, worker: str) -> None:
    if stop_requested():
        release_claim(command.pk, worker)
        return
    with log_context(command_id=command.pk):
        try:
            _run_loaded(command, worker)
        except Exception:
            # The claim stays; the sweep re-queues the command later.
            logger.exception("Command %s crashed the worker loop", command.pk)


def _run_loaded_in_thread(command, worker: str) -> None:
    # Threads of the process-wide pool keep their database connection between
    # commands (CONN_MAX_AGE); drop it only when it is broken or too old.
    close_old_connections()
    _run_loaded_unless_stopping(command, worker)


def _finish(command, worker, **fields) -> bool:
    """Write the outcome only if this worker still has the claim."""
    fields.setdefault("updated_at", timezone.now())
    updated = Command.objects.filter(
        pk=command.pk, state=Command.State.SENT, claimed_by=worker
    ).update(**fields)
    if not updated:
        logger.warning("Command %s was re-queued while %s ran it; outcome dropped", command.pk, worker)
    return bool(updated)


def _stored_result(outcome) -> dict:
    result = outcome.result
    stored = {"preflight": outcome.preflight} if outcome.preflight is not None else {}
    if result is not None:
        stored.update(reference=result.reference, document_number=result.document_number, **result.data)
    return stored


def _success_row(command, outcome, stored) -> LedgerEntry:
    result = outcome.result
    if outcome.dry_run:
        step, message = Step.PREFLIGHT, "Dry run: preflight passed, nothing written to the ERP."
    elif outcome.found:
        step = Step.EXISTING
        message = (
            f"The ERP already holds {result.document_number} with this idempotency key; "
            "it was not created again."
        )
    else:
        step, message = Step.EXECUTE, f"Created {result.document_number} in {command.destination.slug}."
    return ledger.build(
        step,
        message,
        record_key=command.record.record_key,
        command=command,
        payload_before=command.payload,
        payload_after=stored,
    )


def _log_success(command, stored) -> None:
    logger.info(
        "Command %s succeeded: %s",
        command.pk,
        stored.get("document_number", "dry run"),
        extra={"command_id": command.pk},
    )


def _succeed(command, worker, attempt, outcome) -> str:
    now = timezone.now()
    stored = _stored_result(outcome)
    result = outcome.result
    with transaction.atomic():
        if not _finish(
            command,
            worker,
            state=Command.State.SUCCEEDED,
            attempts=attempt,
            result=stored,
            erp_reference=result.reference if result else "",
            erp_document_number=result.document_number if result else "",
            finished_at=now,
            reason_code="",
            last_error="",
        ):
            return Command.State.SENT
        _success_row(command, outcome, stored).save()
        report_success(command)
    _log_success(command, stored)
    return Command.State.SUCCEEDED


def _succeed_many(succeeded, worker: str) -> None:
    """Record the outcomes of a batch: one UPDATE of the commands that this
    worker still holds, one insert of their ledger rows, one case query."""
    if connection.vendor != "postgresql":
        for command, outcome in succeeded:
            _succeed(command, worker, command.attempts + 1, outcome)
        return
    now = timezone.now()
    stored = {command.pk: _stored_result(outcome) for command, outcome in succeeded}
    result_field = Command._meta.get_field("result")
    values, params = [], []
    for command, outcome in succeeded:
        result = outcome.result
        values.append("(%s::bigint, %s::integer, %s::jsonb, %s::varchar, %s::varchar)")
        params += [
            command.pk,
            command.attempts + 1,
            result_field.get_db_prep_value(stored[command.pk], connection),
            result.reference if result else "",
            result.document_number if result else "",
        ]
    table = connection.ops.quote_name(Command._meta.db_table)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS c SET state = %s, attempts = v.attempts, result = v.result, "
                "erp_reference = v.reference, erp_document_number = v.number, finished_at = %s, "
                "updated_at = %s, reason_code = '', last_error = '' "
                f"FROM (VALUES {', '.join(values)}) AS v(id, attempts, result, reference, number) "
                "WHERE c.id = v.id AND c.state = %s AND c.claimed_by = %s RETURNING c.id",
                [Command.State.SUCCEEDED, now, now, *params, Command.State.SENT, worker],
            )
            updated = {row[0] for row in cursor.fetchall()}
        done = [(command, outcome) for command, outcome in succeeded if command.pk in updated]
        LedgerEntry.objects.bulk_create(
            [_success_row(command, outcome, stored[command.pk]) for command, outcome in done]
        )
        for command, _outcome in done:
            command.state = Command.State.SUCCEEDED
        report_successes([command for command, _outcome in done])
    for command, _outcome in succeeded:
        if command.pk in updated:
            _log_success(command, stored[command.pk])
        else:
            logger.warning(
                "Command %s was re-queued while %s ran it; outcome dropped", command.pk, worker
            )


def _hold(command, worker, reason_code: str, message: str) -> str:
    """Keep a command out of the ERP until a person releases it; nothing is lost."""
    with transaction.atomic():
        if not _finish(
            command, worker, state=Command.State.HELD, reason_code=reason_code, last_error=message
        ):
            return Command.State.SENT
        ledger.write(
            Step.FAIL,
            f"Held before sending: {message}",
            ok=False,
            reason_code=reason_code,
            record_key=command.record.record_key,
            command=command,
        )
        report_failure(
            Failure(
                reason_code=reason_code,
                message=message,
                record_key=command.record.record_key,
                detail={"payload": command.payload, "held": True},
                command=command,
                brief=command.brief_version.brief,
                destination=command.destination,
                business_unit=command.record.business_unit,
            )
        )
    logger.warning(
        "Command %s held: %s", command.pk, reason_code, extra={"command_id": command.pk}
    )
    return Command.State.HELD


def release_held(command_ids, *, acting_user) -> int:
    """Queue held commands again after review; each is sent once."""
    from meshline.roles import require

    require(acting_user, "retry_command")
    now = timezone.now()
    released = 0
    for command in Command.objects.filter(pk__in=list(command_ids), state=Command.State.HELD).select_related("record"):
        with log_context(command_id=command.pk), transaction.atomic():
            if Command.objects.filter(pk=command.pk, state=Command.State.HELD).update(
                state=Command.State.PENDING, next_attempt_at=now, claimed_by="", updated_at=now
            ):
                released += 1
                ledger.write(
                    Step.ACTION,
                    f"{acting_user} released held command {command.pk}.",
                    record_key=command.record.record_key,
                    command=command,
                    actor=acting_user,
                )
    if released:
        from syncflows.tasks import enqueue_dispatch

        enqueue_dispatch()
    logger.info("User %s released %s held command(s)", acting_user.pk, released)
    return released


def backoff_seconds(attempt: int, retry_after: float | None) -> float:
    """Return the retry delay: an exponential step with "equal jitter" (a random
    delay between half and all of the step), never shorter than Retry-After."""
    ceiling = min(settings.MESHLINE_BACKOFF_MAX_SECONDS, settings.MESHLINE_BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling) if ceiling else 0
    return max(delay, retry_after or 0)


def _fail(command, worker, attempt, error: AdapterError) -> str:
    now = timezone.now()
    if error.transient and attempt < settings.MESHLINE_MAX_ATTEMPTS:
        delay = backoff_seconds(attempt, error.retry_after)
        with transaction.atomic():
            if not _finish(
                command,
                worker,
                state=Command.State.RETRY_SCHEDULED,
                attempts=attempt,
                next_attempt_at=now + timedelta(seconds=delay),
                reason_code=error.reason_code,
                last_error=error.message[:2000],
            ):
                return Command.State.SENT
            ledger.write(
                Step.RETRY,
                f"Attempt {attempt} failed ({error.reason_code}): {error.message} "
                f"Retrying in {delay:.0f} s.",
                ok=False,
                reason_code=error.reason_code,
                record_key=command.record.record_key,
                command=command,
            )
        logger.warning(
            "Command %s attempt %s failed with %s; retry in %.1f s",
            command.pk, attempt, error.reason_code, delay,
            extra={"command_id": command.pk},
        )
        from syncflows.tasks import schedule_dispatch

        schedule_dispatch(delay)
        return Command.State.RETRY_SCHEDULED

    if error.transient:
        message = f"Gave up after {attempt} attempts: {error.message}"
    else:
        message = error.message
    with transaction.atomic():
        if not _finish(
            command,
            worker,
            state=Command.State.FAILED,
            attempts=attempt,
            reason_code=error.reason_code,
            last_error=message[:2000],
            finished_at=now,
        ):
            return Command.State.SENT
        ledger.write(
            Step.FAIL,
            message,
            ok=False,
            reason_code=error.reason_code,
            record_key=command.record.record_key,
            command=command,
            payload_after=error.detail or None,
        )
        command.refresh_from_db()
        report_failure(
            Failure(
                reason_code=error.reason_code,
                message=message,
                record_key=command.record.record_key,
                detail={**error.detail, "payload": command.payload},
                command=command,
                brief=command.brief_version.brief,
                destination=command.destination,
                business_unit=command.record.business_unit,
            )
        )
    logger.warning(
        "Command %s failed for good: %s",
        command.pk,
        error.reason_code,
        extra={"command_id": command.pk},
    )
    return Command.State.FAILED


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _thread_pool(size: int) -> ThreadPoolExecutor:
    """Return the worker process's dispatch pool, built once per size."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(size, thread_name_prefix="dispatch")
            _pool_size = size
        return _pool


# Commands a worker claims at once. Batch adapters write them together;
# others run them in the dispatch threads.
CLAIM_BATCH = 100


def dispatch_due(
    limit: int | None = None,
    worker: str | None = None,
    max_batches: int = 50,
    concurrency: int | None = None,
) -> int:
    """Claim and run due commands until none are left; return how many ran.

    A claimed batch never contains two commands of one record (the claim skips a
    command while an older one of its record is open), so the batch runs in
    ``concurrency`` threads without breaking per-record order.
    """
    worker = worker or worker_id()
    concurrency = concurrency or settings.MESHLINE_DISPATCH_CONCURRENCY
    threaded_limit = limit or max(20, concurrency * 4)
    total, size = 0, threaded_limit
    pool = _thread_pool(concurrency) if concurrency > 1 else None
    for _ in range(max_batches):
        if stop_requested():
            break
        ids = claim(size, worker)
        if not ids:
            break
        batched = run_batch(ids, worker, pool)
        total += len(ids)
        # Claim a whole batch next time only while every command went to a
        # batch adapter. A claim for threads stays small, so that other
        # workers share the queue.
        size = limit or (CLAIM_BATCH if batched == len(ids) else threaded_limit)
    return total


def release_claim(command_id: int, worker: str) -> bool:
    """Put a claimed command that was not started back in the queue."""
    now = timezone.now()
    released = Command.objects.filter(
        pk=command_id, state=Command.State.SENT, claimed_by=worker
    ).update(state=Command.State.PENDING, claimed_by="", claimed_at=None, updated_at=now)
    if released:
        logger.info(
            "Command %s released by %s, which is stopping",
            command_id,
            worker,
            extra={"command_id": command_id},
        )
    return bool(released)


def sweep(now=None) -> int:
    """Re-queue commands whose worker died after claiming them."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.MESHLINE_CLAIM_TIMEOUT_SECONDS)
    stuck = list(
        Command.objects.filter(state=Command.State.SENT, claimed_at__lt=cutoff).select_related("record")
    )
    requeued = 0
    for command in stuck:
        with log_context(command_id=command.pk), transaction.atomic():
            updated = Command.objects.filter(
                pk=command.pk, state=Command.State.SENT, claimed_at=command.claimed_at
            ).update(state=Command.State.PENDING, claimed_by="", next_attempt_at=now, updated_at=now)
            if updated:
                requeued += 1
                ledger.write(
                    Step.REQUEUE,
                    f"Command {command.pk} was claimed by {command.claimed_by} at "
                    f"{command.claimed_at.isoformat()} and never finished; re-queued.",
                    ok=False,
                    record_key=command.record.record_key,
                    command=command,
                )
    if requeued:
        logger.warning("Sweep re-queued %s command(s) left by dead workers", requeued)
    return requeued
