"""SLA escalation, run by a django-q2 schedule every minute.

Levels, in the order a case reaches them:

1. reminder: the owner is reminded ``MESHLINE_REMINDER_BEFORE_MINUTES``
   before the due time;
2. reassigned: at the due time the case moves to the Triage Lead group;
3. executive: ``MESHLINE_EXECUTIVE_AFTER_MINUTES`` after the due time the
   executives are notified.

A case breached before its reminder went out skips the reminder. Each step
is taken by a conditional UPDATE of ``escalation_level``, so when several
workers run the schedule at once exactly one of them takes a step for a case
and level; the others update no row and do nothing.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from exceptions.models import CaseHistory, ExceptionCase
from exceptions.notifications import notify_case
from meshline.roles import TRIAGE_LEAD
from syncflows.models import LedgerEntry
from syncflows.services import ledger

logger = logging.getLogger(__name__)

REMINDER, REASSIGNED, EXECUTIVE = 1, 2, 3
LEVEL_NAMES = {REMINDER: "reminder", REASSIGNED: "reassigned", EXECUTIVE: "executive"}
# The levels a case may be at for each step to fire.
FROM_LEVELS = {REMINDER: [0], REASSIGNED: [0, 1], EXECUTIVE: [2]}
BATCH = 500


def run_escalation(now=None) -> dict[str, int]:
    """Take every escalation step that is due; return the count per level name."""
    now = now or timezone.now()
    fired = {}
    for level in (REMINDER, REASSIGNED, EXECUTIVE):
        ids = due_case_ids(level, now)
        fired[LEVEL_NAMES[level]] = sum(escalate(pk, level, now) for pk in ids)
    if any(fired.values()):
        logger.info("Escalation run: %s", fired)
    return fired


def due_case_ids(level: int, now) -> list[int]:
    cases = ExceptionCase.objects.filter(
        state__in=ExceptionCase.OPEN_STATES, escalation_level__in=FROM_LEVELS[level]
    )
    if level == REMINDER:
        before = timedelta(minutes=settings.MESHLINE_REMINDER_BEFORE_MINUTES)
        cases = cases.filter(due_at__gt=now, due_at__lte=now + before)
    elif level == REASSIGNED:
        cases = cases.filter(due_at__lte=now)
    else:
        after = timedelta(minutes=settings.MESHLINE_EXECUTIVE_AFTER_MINUTES)
        cases = cases.filter(due_at__lte=now - after)
    return list(cases.order_by("due_at", "id").values_list("id", flat=True)[:BATCH])


def escalate(case_id: int, level: int, now) -> bool:
    """Take one step for one case; return False when another worker took it."""
    with transaction.atomic():
        # The row lock of this UPDATE makes a second worker wait, then find the
        # level already raised, so it updates nothing.
        won = ExceptionCase.objects.filter(
            pk=case_id,
            state__in=ExceptionCase.OPEN_STATES,
            escalation_level__in=FROM_LEVELS[level],
        ).update(escalation_level=level)
        if not won:
            return False
        case = ExceptionCase.objects.select_related(
            "lane", "owner_user", "owner_group"
        ).get(pk=case_id)
        with case.log_context():
            STEPS[level](case, now)
    return True


def _remind(case, now) -> None:
    owner = case.owner_user or case.owner_group
    _record(
        case,
        "reminder_sent",
        case.state,
        f"Level 1: reminded {owner}; due {case.due_at:%Y-%m-%d %H:%M} UTC.",
    )
    notify_case(case, "reminder")


def _reassign(case, now) -> None:
    previous_state = case.state
    previous_owner = case.owner_user or case.owner_group
    case.owner_user = None
    case.owner_group = Group.objects.get_or_create(name=TRIAGE_LEAD)[0]
    case.state = ExceptionCase.State.OPEN
    case.save(update_fields=["owner_user", "owner_group", "state"])
    _record(
        case,
        "reassigned",
        previous_state,
        f"Level 2: the SLA was breached at {case.due_at:%Y-%m-%d %H:%M} UTC; "
        f"reassigned from {previous_owner} to {TRIAGE_LEAD}.",
    )
    notify_case(case, "reassigned")


def _notify_executives(case, now) -> None:
    overdue = now - case.due_at
    hours = int(overdue.total_seconds() // 3600)
    _record(
        case,
        "executive_notified",
        case.state,
        f"Level 3: still open {hours} h after its SLA; executives notified.",
    )
    notify_case(case, "executive")


STEPS = {REMINDER: _remind, REASSIGNED: _reassign, EXECUTIVE: _notify_executives}


def _record(case, action: str, previous_state: str, note: str) -> None:
    CaseHistory.objects.create(
        case=case,
        action=action,
        from_state=previous_state,
        to_state=case.state,
        note=note,
    )
    ledger.write(
        LedgerEntry.Step.ACTION,
        f"Case {case.pk} escalated: {note}",
        ok=False,
        record_key=case.record_key,
        case_id=case.pk,
        command_id=case.command_id,
    )
    logger.info("Case %s escalation %s: %s", case.pk, action, note)
