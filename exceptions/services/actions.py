"""Actions on an exception case. Each one checks the user's role and the case's
state, writes the case history and the ledger, and runs in one transaction."""

import functools
import logging

from django.db import transaction
from django.utils import timezone

from exceptions.models import CaseHistory, ExceptionCase
from exceptions.notifications import notify_case
from meshline import roles
from meshline.roles import require
from syncflows.models import Command, LedgerEntry
from syncflows.services import ledger
from syncflows.services.errors import ActionRefused

logger = logging.getLogger(__name__)
State = ExceptionCase.State

__all__ = [
    "ActionRefused",
    "acknowledge_case",
    "assign_case",
    "compensate_case",
    "dismiss_case",
    "replay_case",
    "resolve_case",
    "retry_case",
]


def with_case_log_context(action):
    """Run ``action(case, ...)`` with the case's ids on every log line it writes."""

    @functools.wraps(action)
    def run(case, *args, **kwargs):
        with case.log_context():
            return action(case, *args, **kwargs)

    return run


def _locked(case) -> ExceptionCase:
    return ExceptionCase.objects.select_for_update().get(pk=case.pk)


def _refuse_closed(case, action: str) -> None:
    if not case.is_open:
        raise ActionRefused(
            f"Case {case.pk} is {case.get_state_display().lower()}, so it cannot be {action}."
        )


def _log(case, user, action, previous, note="") -> None:
    CaseHistory.objects.create(
        case=case,
        actor=user,
        action=action,
        from_state=previous,
        to_state=case.state,
        note=note,
    )
    ledger.write(
        LedgerEntry.Step.ACTION,
        f"{user} {action} case {case.pk}." + (f" {note}" if note else ""),
        record_key=case.record_key,
        case_id=case.pk,
        command=case.command,
        actor=user,
    )
    logger.info("Case %s %s by user %s", case.pk, action, user.pk)


@with_case_log_context
def acknowledge_case(case, *, acting_user) -> ExceptionCase:
    require(acting_user, "triage_case")
    with transaction.atomic():
        case = _locked(case)
        _refuse_closed(case, "acknowledged")
        if case.state == State.ACKNOWLEDGED:
            raise ActionRefused(f"Case {case.pk} is already acknowledged.")
        previous = case.state
        case.state = State.ACKNOWLEDGED
        case.acknowledged_at = timezone.now()
        if case.owner_user is None:
            case.owner_user = acting_user
        case.save(update_fields=["state", "acknowledged_at", "owner_user"])
        _log(case, acting_user, "acknowledged", previous)
    return case


@with_case_log_context
def assign_case(case, *, acting_user, user=None, group=None) -> ExceptionCase:
    """Give the case to one user, or to a group with no single owner."""
    require(acting_user, "triage_case")
    if (user is None) == (group is None):
        raise ActionRefused("Choose either a person or a group to assign the case to.")
    if user is not None and not (user.is_active and roles.can(user, "triage_case")):
        raise ActionRefused(
            f"{user} cannot work on cases: assign it to someone with one of the roles "
            f"{', '.join(sorted(roles.POLICY['triage_case']))}."
        )
    with transaction.atomic():
        case = _locked(case)
        _refuse_closed(case, "assigned")
        if user is not None and case.owner_user_id == user.pk:
            raise ActionRefused(f"Case {case.pk} is already assigned to {user}.")
        previous = case.state
        if user is not None:
            case.owner_user = user
            if case.state == State.OPEN:
                case.state = State.ASSIGNED
        else:
            case.owner_user, case.owner_group = None, group
            case.state = State.OPEN
        case.save(update_fields=["owner_user", "owner_group", "state"])
        _log(case, acting_user, "assigned", previous, f"Owner is now {user or group}.")
        if user is not None and user != acting_user:
            notify_case(case, "assigned")
    return case


@with_case_log_context
def resolve_case(case, *, acting_user, note: str) -> ExceptionCase:
    require(acting_user, "triage_case")
    if not note.strip():
        raise ActionRefused("The resolution note is missing: describe how the case was resolved.")
    with transaction.atomic():
        case = _locked(case)
        _refuse_closed(case, "resolved")
        previous = case.state
        case.state = State.RESOLVED
        case.closed_at = timezone.now()
        case.resolution_note = note.strip()
        case.save(update_fields=["state", "closed_at", "resolution_note"])
        _log(case, acting_user, "resolved", previous, note.strip())
    return case


@with_case_log_context
def dismiss_case(case, *, acting_user, reason: str) -> ExceptionCase:
    require(acting_user, "triage_case")
    if not reason.strip():
        raise ActionRefused("Give the reason for dismissing the case.")
    with transaction.atomic():
        case = _locked(case)
        _refuse_closed(case, "dismissed")
        previous = case.state
        case.state = State.DISMISSED
        case.closed_at = timezone.now()
        case.resolution_note = reason.strip()
        case.save(update_fields=["state", "closed_at", "resolution_note"])
        _log(case, acting_user, "dismissed", previous, reason.strip())
    return case


@with_case_log_context
def retry_case(case, *, acting_user, permission: str = "retry_command") -> ExceptionCase:
    """Send the same command again, or run the same brief version again when
    the failure came before a command existed. ``permission`` is the policy
    action checked: a suggested fix checks ``fix_case`` instead."""
    require(acting_user, permission)
    from syncflows.services.pipeline import RunFailed, rerun
    from syncflows.tasks import enqueue_dispatch

    with transaction.atomic():
        case = _locked(case)
        _refuse_closed(case, "retried")
        if case.command_id:
            updated = Command.objects.filter(
                pk=case.command_id, state=Command.State.FAILED
            ).update(
                state=Command.State.PENDING,
                next_attempt_at=timezone.now(),
                claimed_by="",
                updated_at=timezone.now(),
            )
            if not updated:
                state = (
                    Command.objects.get(pk=case.command_id).get_state_display().lower()
                )
                raise ActionRefused(
                    f"Command {case.command_id} is {state}; only a failed command can be retried."
                )
            _log(
                case,
                acting_user,
                "retried",
                case.state,
                f"Command {case.command_id} queued again.",
            )
            enqueue_dispatch()
        elif case.run_id:
            _log(
                case,
                acting_user,
                "retried",
                case.state,
                f"Run {case.run_id} started again.",
            )
            try:
                rerun(case.run_id)
            except RunFailed as exc:
                raise ActionRefused(exc.message) from None
            enqueue_dispatch()
        else:
            raise ActionRefused(f"Case {case.pk} has no command or run to retry.")
    case.refresh_from_db()
    return case


@with_case_log_context
def replay_case(case, *, acting_user, permission: str = "replay_event") -> ExceptionCase:
    """Run the pipeline again from the record's stored state with the brief's
    current active version."""
    require(acting_user, permission)
    from syncflows.services.pipeline import RunFailed, rerun
    from syncflows.tasks import enqueue_dispatch

    run_id = case.run_id or (
        case.command
        and case.command.runs.order_by("-id").values_list("id", flat=True).first()
    )
    if not run_id:
        raise ActionRefused(f"Case {case.pk} has no stored event to replay.")
    with transaction.atomic():
        case = _locked(case)
        _refuse_closed(case, "replayed")
        if case.command_id:
            Command.objects.filter(
                pk=case.command_id, state=Command.State.FAILED
            ).update(state=Command.State.SUPERSEDED, finished_at=timezone.now())
        _log(
            case,
            acting_user,
            "replayed",
            case.state,
            "Pipeline run again with the active brief version.",
        )
        try:
            command = rerun(run_id, use_active_version=True)
        except RunFailed as exc:
            raise ActionRefused(exc.message) from None
        if command is not None:
            # The case closes when the replayed command succeeds.
            ExceptionCase.objects.filter(pk=case.pk).update(command=command)
        enqueue_dispatch()
    case.refresh_from_db()
    return case


def compensated_command_id(case) -> int | None:
    """Return the command whose ERP document a compensation of ``case`` reverses.

    That is the case's own command, or for an idempotency conflict the
    earlier command that already created the document.
    """
    if case.command_id and case.command.state == Command.State.SUCCEEDED:
        return case.command_id
    existing = (case.detail or {}).get("existing_command")
    return existing if isinstance(existing, int) else None


@with_case_log_context
def compensate_case(case, *, acting_user, note: str = "") -> ExceptionCase:
    """Reverse the ERP document behind the case; the case stays open for a replay."""
    require(acting_user, "retry_command")
    from syncflows.services.compensation import compensate_command

    with transaction.atomic():
        case = _locked(case)
        _refuse_closed(case, "compensated")
        command_id = compensated_command_id(case)
        if command_id is None:
            raise ActionRefused(
                f"Case {case.pk} has no command that created an ERP document, so there "
                "is nothing to reverse."
            )
        outcome = compensate_command(command_id, acting_user=acting_user, note=note)
        text = outcome.get("message") or f"Command {command_id} reversed."
        _log(
            case,
            acting_user,
            "compensated",
            case.state,
            f"{text} Replay to create a new document.",
        )
    return case
