"""Background work for reporting on django-q2. Tasks take ids, never rows."""

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

logger = logging.getLogger(__name__)

# A running run whose heartbeat is older than this is taken to be dead.
STALE_RUN_MINUTES = 15
# Whether this worker process has logged that the KPI summary needs a rebuild.
_rebuild_reported = False


def enqueue_reconciliation(run_id: int) -> None:
    if settings.MESHLINE_SYNC_PIPELINE:
        reconciliation_task(run_id)
        return
    from django_q.tasks import async_task

    async_task("reporting.tasks.reconciliation_task", run_id, group="reporting")


def reconciliation_task(run_id: int) -> dict:
    from reporting.services.reconciliation import execute_run

    run = execute_run(run_id)
    return {"run": run.pk, "processed": run.processed}


def nightly_reconciliation() -> dict:
    """Resume runs that a crash left behind, then reconcile the last days."""
    from reporting.models import ReconciliationRun
    from reporting.services.reconciliation import execute_run, start_run

    cutoff = timezone.now() - timedelta(minutes=STALE_RUN_MINUTES)
    stale = ReconciliationRun.objects.filter(
        state__in=[ReconciliationRun.State.RUNNING, ReconciliationRun.State.FAILED],
        heartbeat_at__lt=cutoff,
    ).values_list("pk", flat=True)
    for run_id in list(stale):
        logger.warning("Resuming reconciliation run %s", run_id)
        execute_run(run_id)
    end = timezone.now()
    start = end - timedelta(days=settings.MESHLINE_RECONCILIATION_DAYS)
    run = execute_run(start_run(start, end).pk)
    return {"run": run.pk, "processed": run.processed}


def nightly_drift() -> dict:
    from reporting.services.drift import run_nightly

    return run_nightly()


def fold_kpi_summary() -> dict:
    """Fold the ledger rows written since the last fold into the KPI summary."""
    from reporting.services.summary import fold, needs_rebuild

    global _rebuild_reported
    count = fold(wait=False)
    if count is None and needs_rebuild() and not _rebuild_reported:
        logger.warning(
            "The KPI summary needs a rebuild and is not folded until then. Run "
            "manage.py rebuild_kpi_summary; the dashboard computes the KPIs live."
        )
        _rebuild_reported = True
    return {"facts": count}
