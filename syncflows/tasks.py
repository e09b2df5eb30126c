"""Background work on django-q2. Tasks take ids, never model instances.

With ``MESHLINE_SYNC_PIPELINE`` on, the same functions run inline after the
commit instead of on a worker; tests and ``ingest --inline`` use that.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

SWEEP_AFTER_SECONDS = 60


def enqueue_changes(change_ids: list[int]) -> None:
    """Queue processing of record changes, to run once they are committed."""
    _enqueue(process_changes_task, change_ids)


def enqueue_deliveries(delivery_ids: list[int]) -> None:
    """Queue normalising of stored deliveries, to run once they are committed."""
    _enqueue(normalise_deliveries_task, delivery_ids)


def delivery_task_rows(delivery_ids: list[int]) -> list | None:
    """Return the django-q2 queue row for normalising these deliveries, for
    the caller to insert with its own rows, or None when the task is not a
    row to insert: on another broker, or with the pipeline inline. The
    caller then queues it with ``enqueue_deliveries`` after its commit."""
    from django_q.conf import Conf
    from django_q.tasks import async_task

    if settings.MESHLINE_SYNC_PIPELINE or not Conf.ORM or Conf.BROKER_CLASS or Conf.SYNC:
        return None

    queue = _HeldQueue()
    async_task(
        f"syncflows.tasks.{normalise_deliveries_task.__name__}",
        list(delivery_ids),
        group="pipeline",
        broker=queue,
    )
    return queue.rows


class _HeldQueue:
    """A stand-in for django-q2's ORM broker that keeps the queue row it is
    given, unsaved, instead of inserting it. The row is the one
    ``django_q.brokers.orm.ORM.enqueue`` writes."""

    def __init__(self):
        from django_q.conf import Conf

        self.list_key = Conf.CLUSTER_NAME
        self.rows = []

    def enqueue(self, package):
        from django_q.models import OrmQ

        self.rows.append(OrmQ(key=self.list_key, payload=package, lock=timezone.now()))
        # django-q2 logs this as the queue row's id, which exists only once
        # the caller has inserted the row.
        return "(written with the caller's rows)"


def _enqueue(task, ids) -> None:
    """Queue ``task(ids)`` for a worker, or run it inline after the commit.

    On the ORM broker the task row is written in the caller's transaction, so
    the rows and their task commit together, with one commit. Any other
    broker receives the task after the commit. If Redis fails at that point,
    the error is logged, not raised, because the rows are committed already.
    The minute sweep then runs the task for deliveries and changes left
    waiting."""
    ids = list(ids)
    if settings.MESHLINE_SYNC_PIPELINE:
        transaction.on_commit(lambda: task(ids))
        return
    from django_q.tasks import async_task

    if settings.Q_CLUSTER.get("orm") and transaction.get_connection().in_atomic_block:
        async_task(f"syncflows.tasks.{task.__name__}", ids, group="pipeline")
        return

    def send():
        try:
            async_task(f"syncflows.tasks.{task.__name__}", ids, group="pipeline")
        except RedisError as exc:
            logger.error(
                "Queueing %s for %s on Redis failed (%s: %s). The rows are committed, and "
                "the minute sweep runs the task for them once they have waited %s s.",
                task.__name__,
                ids,
                type(exc).__name__,
                exc,
                SWEEP_AFTER_SECONDS,
            )

    transaction.on_commit(send)


def enqueue_dispatch() -> None:
    if settings.MESHLINE_SYNC_PIPELINE:
        transaction.on_commit(dispatch_task)
        return
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task("syncflows.tasks.dispatch_task", group="dispatch"))


def schedule_dispatch(delay_seconds: float) -> None:
    """Wake a worker when a retry falls due. The minute sweep is the fallback."""
    if settings.MESHLINE_SYNC_PIPELINE:
        return
    from django_q.models import Schedule

    Schedule.objects.create(
        func="syncflows.tasks.dispatch_task",
        schedule_type=Schedule.ONCE,
        next_run=timezone.now() + timedelta(seconds=delay_seconds),
        repeats=-1,
        name=None,
    )


def process_changes_task(change_ids: list[int]) -> int:
    from syncflows.services.pipeline import process_changes

    # Filling the batch with other waiting changes works a backlog off in
    # batches; the tasks of those changes then find nothing left to do.
    command_ids = process_changes(change_ids, fill=True)
    if command_ids:
        _dispatch()
    return len(command_ids)


# Stored deliveries that one task normalises at most, its own included.
NORMALISE_BATCH = 50


def normalise_deliveries_task(delivery_ids: list[int]) -> int:
    """Apply the events of stored deliveries, then process their changes.

    The task also takes other deliveries still waiting, so that under a
    backlog their changes are processed and sent in one batch, and the tasks
    that come later find their delivery done."""
    from django.db import InterfaceError, OperationalError

    from syncflows.models import Delivery
    from syncflows.services.receive import normalise_delivery, quarantine_unnormalised

    ids = list(delivery_ids)
    room = NORMALISE_BATCH - len(ids)
    if room > 0:
        waiting = Delivery.objects.filter(status=Delivery.Status.RECEIVED).exclude(pk__in=ids)
        ids += list(waiting.order_by("received_at").values_list("id", flat=True)[:room])
    change_ids = []
    for delivery_id in ids:
        try:
            result = normalise_delivery(delivery_id)
        except (InterfaceError, OperationalError):
            # The database is unreachable, so the delivery stays waiting for
            # the next task or sweep.
            raise
        except Exception as exc:
            # One delivery that cannot be applied must not stop the others,
            # nor the minute sweep that calls this task.
            quarantine_unnormalised(delivery_id, exc)
            continue
        if result is not None:
            change_ids.extend(result.change_ids)
    if not change_ids:
        return 0
    return process_changes_task(change_ids)


def dispatch_task() -> int:
    return _dispatch()


def _dispatch() -> int:
    """Run due commands; when the worker is stopping, hand the rest over.

    A stopping worker puts the commands it claimed but did not start back in
    the outbox. A new dispatch task on the broker lets another cluster, or
    the next one to start, run them at once instead of at the next sweep.
    NOTE: the stopping cluster's pusher may take this task before it stops.
    A worker then runs it at once, claims nothing and queues it again.
    """
    from meshline.shutdown import stop_requested
    from syncflows.models import Command
    from syncflows.services.dispatch import dispatch_due

    ran = dispatch_due()
    if stop_requested() and not settings.MESHLINE_SYNC_PIPELINE:
        due = Command.objects.filter(
            state__in=[Command.State.PENDING, Command.State.RETRY_SCHEDULED],
            next_attempt_at__lte=timezone.now(),
        )
        if due.exists():
            from django_q.tasks import async_task

            async_task("syncflows.tasks.dispatch_task", group="dispatch")
            logger.info("Worker is stopping; queued a dispatch task for the due commands")
    return ran


def sweep_task() -> dict:
    """Re-queue work that a lost task message or a dead worker left behind."""
    from syncflows.models import RecordChange
    from syncflows.services.dispatch import sweep

    requeued = sweep()
    cutoff = timezone.now() - timedelta(seconds=SWEEP_AFTER_SECONDS)
    from syncflows.models import Delivery

    stored = list(
        Delivery.objects.filter(status=Delivery.Status.RECEIVED, received_at__lt=cutoff)
        .order_by("received_at")
        .values_list("id", flat=True)[:1000]
    )
    if stored:
        logger.warning("Sweep found %s delivery(ies) never normalised; normalising them", len(stored))
        normalise_deliveries_task(stored)
    forgotten = list(
        RecordChange.objects.filter(status=RecordChange.Status.APPLIED, created_at__lt=cutoff)
        .order_by("id")
        .values_list("id", flat=True)[:1000]
    )
    if forgotten:
        logger.warning("Sweep found %s record change(s) never processed; processing them", len(forgotten))
        process_changes_task(forgotten)
    ran = _dispatch()
    return {
        "requeued": requeued,
        "deliveries": len(stored),
        "changes": len(forgotten),
        "dispatched": ran,
    }
