"""Bulk actions (assign, retry, resolve) on a filtered selection of cases.

Each case goes through the same service function as a single action, so the
role and state checks and the history are the same. A selection larger than
``MESHLINE_BULK_INLINE_LIMIT`` runs on a worker and stores its progress on
the BulkAction row, which the progress bar polls.
"""

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from exceptions.models import BulkAction, ExceptionCase
from exceptions.services import actions
from meshline.roles import require

logger = logging.getLogger(__name__)

Action = BulkAction.Action
ROLE_FOR = {
    Action.ASSIGN: "triage_case",
    Action.RETRY: "retry_command",
    Action.RESOLVE: "triage_case",
}
PROGRESS_EVERY = 20
MAX_ERRORS = 50


def start_bulk_action(action: str, case_ids, *, acting_user, params=None) -> BulkAction:
    """Check the request, store it and run it (inline or on a worker)."""
    if action not in ROLE_FOR:
        raise actions.ActionRefused(
            f"{action!r} is not a bulk action: use assign, retry or resolve."
        )
    require(acting_user, ROLE_FOR[action])
    params = dict(params or {})
    ids = sorted({int(pk) for pk in case_ids})
    if not ids:
        raise actions.ActionRefused("No cases are selected.")
    if action == Action.ASSIGN:
        assignee_for(params)
    if action == Action.RESOLVE and not str(params.get("note", "")).strip():
        raise actions.ActionRefused(
            "The resolution note is missing: describe how the cases were resolved."
        )
    bulk = BulkAction.objects.create(
        action=action,
        requested_by=acting_user,
        case_ids=ids,
        params=params,
        total=len(ids),
    )
    logger.info(
        "Bulk %s %s of %s case(s) requested by user %s",
        action,
        bulk.pk,
        len(ids),
        acting_user.pk,
    )
    if len(ids) <= settings.MESHLINE_BULK_INLINE_LIMIT:
        run_bulk_action(bulk.pk)
        bulk.refresh_from_db()
    else:
        queue_bulk_action(bulk.pk)
    return bulk


def queue_bulk_action(bulk_id: int) -> None:
    if settings.MESHLINE_SYNC_PIPELINE:
        transaction.on_commit(lambda: run_bulk_action(bulk_id))
        return
    from django_q.tasks import async_task

    transaction.on_commit(
        lambda: async_task("exceptions.tasks.run_bulk_task", bulk_id, group="bulk")
    )


def assignee_for(params):
    try:
        return get_user_model().objects.get(
            pk=int(params.get("user_id")), is_active=True
        )
    except (TypeError, ValueError, get_user_model().DoesNotExist):
        raise actions.ActionRefused(
            "Choose the person to assign the cases to."
        ) from None


def _performer(bulk):
    user = bulk.requested_by
    if bulk.action == Action.ASSIGN:
        assignee = assignee_for(bulk.params)
        return lambda case: actions.assign_case(case, acting_user=user, user=assignee)
    if bulk.action == Action.RETRY:
        return lambda case: actions.retry_case(case, acting_user=user)
    note = bulk.params["note"]
    return lambda case: actions.resolve_case(case, acting_user=user, note=note)


def run_bulk_action(bulk_id: int) -> None:
    """Apply the action to every case; one refused case never stops the rest."""
    if not BulkAction.objects.filter(pk=bulk_id, state=BulkAction.State.QUEUED).update(
        state=BulkAction.State.RUNNING
    ):
        return  # already run, for example by a duplicate task message
    bulk = BulkAction.objects.select_related("requested_by").get(pk=bulk_id)
    errors, pending = [], {"done": 0, "succeeded": 0, "skipped": 0}
    try:
        perform = _performer(bulk)
        for index, case_id in enumerate(bulk.case_ids, start=1):
            _apply(perform, case_id, pending, errors)
            if index % PROGRESS_EVERY == 0:
                _save_progress(bulk_id, pending, errors)
        _save_progress(bulk_id, pending, errors, state=BulkAction.State.DONE)
    except Exception:
        logger.exception("Bulk action %s stopped", bulk_id)
        _save_progress(bulk_id, pending, errors, state=BulkAction.State.FAILED)
    logger.info("Bulk action %s finished", bulk_id)


def _apply(perform, case_id, pending, errors) -> None:
    pending["done"] += 1
    case = ExceptionCase.objects.filter(pk=case_id).first()
    if case is None:
        message = f"Case {case_id} no longer exists."
    else:
        try:
            perform(case)
            pending["succeeded"] += 1
            return
        except (actions.ActionRefused, PermissionDenied) as exc:
            message = getattr(exc, "message", None) or str(exc)
    pending["skipped"] += 1
    if len(errors) < MAX_ERRORS:
        errors.append({"case": case_id, "message": message})


def _save_progress(bulk_id, pending, errors, state=None) -> None:
    fields = {name: F(name) + value for name, value in pending.items()}
    fields["errors"] = list(errors)
    if state is not None:
        fields["state"] = state
        fields["finished_at"] = timezone.now()
    BulkAction.objects.filter(pk=bulk_id).update(**fields)
    for name in pending:
        pending[name] = 0
