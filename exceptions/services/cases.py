"""Opening exception cases for pipeline failures, with an owner and an SLA."""

import logging

from django.contrib.auth.models import Group
from django.utils import timezone

from exceptions import sla
from exceptions.models import CaseHistory, ExceptionCase, Lane, OwnershipRule
from exceptions.notifications import notify_case
from meshline.logging import log_context
from meshline.roles import TRIAGE_LEAD
from syncflows.adapters.base import REASONS
from syncflows.models import LedgerEntry
from syncflows.services import ledger

logger = logging.getLogger(__name__)

# Reasons that are about the data before the ERP saw it: a later successful
# run of the same brief and record makes such a case obsolete.
PRE_DISPATCH_REASONS = {
    "schema_invalid",
    "mapping_missing",
    "acceptance_failed",
    # A CRM read-back that failed for good; a later successful run supersedes it.
    "crm_unavailable",
    "rate_limited",
}


def pick_rule(keywords, business_unit, destination_id, reason_code):
    """Return the most specific ownership rule that matches, or None.

    Empty rule fields match anything. The rule with more filled fields wins.
    Among equally specific rules the lower priority number wins, and among
    those the older rule (lower id). A keyword matches when it is one of the
    brief's keywords.
    """
    candidates = []
    for rule in OwnershipRule.objects.select_related(
        "lane", "owner_user", "owner_group"
    ):
        if rule.keyword and rule.keyword not in keywords:
            continue
        if rule.business_unit and rule.business_unit != business_unit:
            continue
        if rule.destination_id and rule.destination_id != destination_id:
            continue
        if rule.reason_code and rule.reason_code != reason_code:
            continue
        candidates.append(rule)
    if not candidates:
        return None
    candidates.sort(key=lambda r: (-r.specificity, r.priority, r.pk))
    return candidates[0]


def _fallback_lane(reason_code):
    for lane in Lane.objects.all():
        if reason_code in (lane.reason_codes or []):
            return lane
    triage = Group.objects.get_or_create(name=TRIAGE_LEAD)[0]
    lane, _ = Lane.objects.get_or_create(
        slug="triage",
        defaults={
            "name": "Triage",
            "owner_group": triage,
            "description": "Cases no rule claims.",
        },
    )
    return lane


def open_case_for_failure(failure):
    """Open a case for ``failure``, or update the open case of its command."""
    with log_context(
        command_id=getattr(failure.command, "pk", None),
        event_id=getattr(failure.event, "pk", None),
    ):
        existing = _open_case_of_command(failure)
        if existing is not None:
            return existing
        return _open_case(failure)


def _open_case(failure):
    keywords = list(failure.brief.keywords) if failure.brief else []
    destination_id = failure.destination.pk if failure.destination else None
    rule = pick_rule(
        keywords, failure.business_unit, destination_id, failure.reason_code
    )
    if rule is not None:
        lane, owner_user, owner_group = rule.lane, rule.owner_user, rule.owner_group
        keyword = rule.keyword or (keywords[0] if keywords else "")
    else:
        lane = _fallback_lane(failure.reason_code)
        owner_user = None
        # No rule names an owner: the Triage Lead group owns it, so every case has an owner.
        owner_group = Group.objects.get_or_create(name=TRIAGE_LEAD)[0]
        keyword = keywords[0] if keywords else ""
    title, fix = REASONS.get(failure.reason_code, (failure.reason_code, ""))
    now = timezone.now()
    # The brief's SLA wins; a failure without a brief takes the lane's.
    sla_hours = failure.brief.sla_hours if failure.brief else lane.sla_hours
    case = ExceptionCase.objects.create(
        reason_code=failure.reason_code,
        title=title,
        message=failure.message,
        suggested_fix=fix,
        detail=failure.detail,
        state=ExceptionCase.State.ASSIGNED if owner_user else ExceptionCase.State.OPEN,
        lane=lane,
        owner_user=owner_user,
        owner_group=owner_group,
        record_key=failure.record_key,
        keyword=keyword,
        business_unit=failure.business_unit,
        brief=failure.brief,
        destination=failure.destination,
        run=failure.run,
        command=failure.command,
        event=failure.event,
        opened_at=now,
        due_at=sla.due_at(now, sla_hours, business_hours=lane.business_hours),
    )
    owner = owner_user or owner_group
    with case.log_context():
        CaseHistory.objects.create(
            case=case,
            action="opened",
            to_state=case.state,
            note=f"Opened for {failure.reason_code}; owner {owner}"
            + (f" by rule {rule.pk}." if rule else " because no ownership rule matched."),
        )
        ledger.write(
            LedgerEntry.Step.EXCEPTION,
            f"Exception case {case.pk} opened ({failure.reason_code}) in lane {lane.slug}, owner {owner}.",
            ok=False,
            reason_code=failure.reason_code,
            record_key=failure.record_key,
            case_id=case.pk,
            command=failure.command,
            run=failure.run,
        )
        logger.info(
            "Case %s opened for %s (%s)", case.pk, failure.record_key, failure.reason_code
        )
        notify_case(case, "opened")
    return case


def _open_case_of_command(failure):
    """Update the open case of a command that failed again, instead of opening
    a second case for the same command."""
    if failure.command is None:
        return None
    case = (
        ExceptionCase.objects.select_for_update()
        .filter(command=failure.command, state__in=ExceptionCase.OPEN_STATES)
        .first()
    )
    if case is None:
        return None
    with case.log_context():
        _record_failed_again(case, failure)
    return case


def _record_failed_again(case, failure) -> None:
    title, fix = REASONS.get(failure.reason_code, (failure.reason_code, ""))
    case.reason_code, case.title, case.suggested_fix = failure.reason_code, title, fix
    case.message, case.detail = failure.message, failure.detail
    case.save(update_fields=["reason_code", "title", "suggested_fix", "message", "detail"])
    CaseHistory.objects.create(
        case=case,
        action="failed_again",
        from_state=case.state,
        to_state=case.state,
        note=f"Command {failure.command.pk} failed again ({failure.reason_code}): {failure.message}",
    )
    ledger.write(
        LedgerEntry.Step.EXCEPTION,
        f"Exception case {case.pk} updated: command {failure.command.pk} failed again "
        f"({failure.reason_code}).",
        ok=False,
        reason_code=failure.reason_code,
        record_key=failure.record_key,
        case_id=case.pk,
        command=failure.command,
    )
    logger.info(
        "Case %s updated: command %s failed again (%s)",
        case.pk,
        failure.command.pk,
        failure.reason_code,
    )


def close_obsolete_cases(items) -> None:
    """Resolve open pre-dispatch cases once the same brief succeeds on the record.

    ``items`` contains ``(record_key, brief_id, run)`` for each run of a batch; one
    query finds the cases of all of them."""
    runs = {(record_key, brief_id): run for record_key, brief_id, run in items}
    cases = ExceptionCase.objects.filter(
        record_key__in={record_key for record_key, _brief, _run in items},
        brief_id__in={brief_id for _key, brief_id, _run in items},
        state__in=ExceptionCase.OPEN_STATES,
        reason_code__in=PRE_DISPATCH_REASONS,
        # Only failures before any command existed; a failed command's case
        # closes when that command succeeds.
        command__isnull=True,
    ).order_by("id")
    for case in cases:
        run = runs.get((case.record_key, case.brief_id))
        command = run.command if run is not None else None
        if command is None:
            continue
        if command.state == command.State.SUCCEEDED:
            case.command = command
            case.save(update_fields=["command"])
            _auto_resolve(
                case, f"A later run ({run.pk}) found command {command.pk} already in the ERP."
            )
            continue
        # The data is fixed but the ERP has not accepted it yet: the case
        # follows the new command and closes only when that command succeeds.
        case.command = command
        case.save(update_fields=["command"])
        CaseHistory.objects.create(
            case=case,
            action="linked",
            from_state=case.state,
            to_state=case.state,
            note=f"A later run ({run.pk}) queued command {command.pk}; the case "
            "closes when the ERP accepts it.",
        )


def close_cases_of_commands(commands) -> None:
    """Resolve the open cases of commands that have now succeeded."""
    by_id = {command.pk: command for command in commands}
    cases = ExceptionCase.objects.filter(
        command_id__in=list(by_id), state__in=ExceptionCase.OPEN_STATES
    ).order_by("id")
    for case in cases:
        _auto_resolve(case, f"Command {case.command_id} succeeded on a later attempt.")


def _auto_resolve(case, note: str) -> None:
    with case.log_context():
        _record_auto_resolve(case, note)


def _record_auto_resolve(case, note: str) -> None:
    previous = case.state
    case.state = ExceptionCase.State.RESOLVED
    case.closed_at = timezone.now()
    case.resolution_note = note
    case.save(update_fields=["state", "closed_at", "resolution_note"])
    CaseHistory.objects.create(
        case=case,
        action="auto_resolved",
        from_state=previous,
        to_state=case.state,
        note=note,
    )
    ledger.write(
        LedgerEntry.Step.ACTION,
        f"Exception case {case.pk} resolved: {note}",
        record_key=case.record_key,
        case_id=case.pk,
    )
    logger.info("Case %s resolved automatically: %s", case.pk, note)
