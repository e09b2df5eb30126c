"""Background work on django-q2. Tasks take ids, never model instances.

With ``MESHLINE_SYNC_PIPELINE`` on, the same functions run inline after the
commit instead of on a worker; tests and ``ingest --inline`` use that.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

SWEEP_AFTER_SECONDS = 60


def enqueue_changes(change_ids: list[int]) -> None:
    """Queue processing of committed record changes, after the commit."""
    ids = list(change_ids)
    if settings.MESHLINE_SYNC_PIPELINE:
        transaction.on_commit(lambda: process_changes_task(ids))
        return
    from django_q.tasks import async_task

    transaction.on_commit(
        lambda: async_task("syncflows.tasks.process_changes_task", ids, group="pipeline")
    )


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

    command_ids = process_changes(change_ids)
    if command_ids:
        _dispatch()
    return len(command_ids)


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
    forgotten = list(
        RecordChange.objects.filter(status=RecordChange.Status.APPLIED, created_at__lt=cutoff)
        .order_by("id")
        .values_list("id", flat=True)[:1000]
    )
    if forgotten:
        logger.warning("Sweep found %s record change(s) never processed; processing them", len(forgotten))
        process_changes_task(forgotten)
    ran = _dispatch()
    return {"requeued": requeued, "changes": len(forgotten), "dispatched": ran}
