"""The lifecycle of brief versions and trigger changes.

draft → in review → approved → active → retired. Approval needs one Sales Ops
approval of the CRM side and one Finance approval of the ERP side, by two
different people, neither of whom wrote or edited the version. Every
transition locks its row, checks role, author and state, writes a BriefAudit
row and mails the next person to act after the commit.
"""

import json
import logging

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from meshline import roles
from meshline.expressions import (
    ACCEPTANCE_VARIABLES,
    MAPPING_VARIABLES,
    TRIGGER_VARIABLES,
    check_expression,
)
from syncflows.models import (
    Approval,
    Brief,
    BriefAudit,
    BriefVersion,
    Route,
    SyntheticRun,
    TriggerChange,
)
from syncflows.services import notify, synthetic
from syncflows.services.configuration import save_trigger
from syncflows.services.errors import ActionRefused

logger = logging.getLogger(__name__)
State = BriefVersion.State
Side = Approval.Side

EDITABLE_FIELDS = (
    "command_type",
    "mapping",
    "command_schema",
    "acceptance",
    "ready_condition",
    "read_back",
)
SIDE_ROLE = {Side.CRM: roles.SALES_OPS, Side.ERP: roles.FINANCE}
CANARY_POLICY_TEXT = {
    "schema_change": (
        "A version that changes the command schema runs as a canary for one business "
        "unit before it becomes active everywhere; other approved versions can go "
        "straight to active."
    ),
    "always": "Every approved version runs as a canary for one business unit first.",
    "never": "Approved versions can go straight to active; a canary is optional.",
}


def canary_policy() -> str:
    return getattr(settings, "MESHLINE_CANARY_POLICY", "schema_change")


# Helpers shared by brief versions and trigger changes.


def _lock(subject):
    return type(subject).objects.select_for_update().get(pk=subject.pk)


def _label(subject) -> str:
    if isinstance(subject, BriefVersion):
        return f"{subject.brief.name} v{subject.number}"
    return f"trigger {subject.trigger.name}, change {subject.number}"


def _link(subject) -> str:
    if isinstance(subject, BriefVersion):
        return reverse("syncflows:brief-detail", args=[subject.brief.slug])
    return reverse("syncflows:trigger-change", args=[subject.trigger.slug])


def _subject_filter(subject) -> dict:
    if isinstance(subject, BriefVersion):
        return {"version": subject}
    return {"trigger_change": subject}


def _user(user):
    return user if user is not None and user.is_authenticated else None


def audit(subject, action, *, actor, from_state="", to_state="", comment="", **detail):
    brief = subject.brief if isinstance(subject, BriefVersion) else None
    return BriefAudit.objects.create(
        brief=brief,
        **_subject_filter(subject),
        action=action,
        from_state=from_state,
        to_state=to_state,
        actor=_user(actor),
        comment=comment,
        detail=detail,
    )


def _move(subject, to_state, action, *, actor, comment="", **detail):
    from_state = subject.state
    subject.state = to_state
    subject.save()
    audit(
        subject,
        action,
        actor=actor,
        from_state=from_state,
        to_state=to_state,
        comment=comment,
        **detail,
    )
    logger.info(
        "%s: %s → %s by user %s",
        _label(subject),
        from_state,
        to_state,
        getattr(actor, "pk", None),
    )


def _require_state(subject, *allowed):
    if subject.state not in allowed:
        names = " or ".join(dict(State.choices)[state].lower() for state in allowed)
        raise ActionRefused(
            f"{_label(subject)} is {subject.get_state_display().lower()}; "
            f"this needs a version that is {names}."
        )


def authors(subject) -> set[int]:
    """Ids of the people who wrote or edited the subject."""
    ids = set(
        BriefAudit.objects.filter(
            **_subject_filter(subject), action__in=["create", "edit"]
        )
        .exclude(actor=None)
        .values_list("actor_id", flat=True)
    )
    if subject.created_by_id:
        ids.add(subject.created_by_id)
    return ids


def standing_approvals(subject):
    return Approval.objects.filter(
        **_subject_filter(subject),
        decision=Approval.Decision.APPROVE,
        withdrawn_at__isnull=True,
    ).select_related("user")


def withdraw_approvals(subject, reason: str) -> int:
    count = standing_approvals(subject).update(
        withdrawn_at=timezone.now(), withdrawn_reason=reason[:200]
    )
    if count:
        logger.info("%s: %s approvals withdrawn (%s)", _label(subject), count, reason)
    return count


def _notify_reviewers(subject, sides, *, exclude_ids, subject_line, body):
    users = []
    for side in sides:
        users += list(notify.users_with_role(SIDE_ROLE[side], exclude_ids=exclude_ids))
    return notify.notify(users, subject_line, body, link=_link(subject))


def _notify_author(subject, subject_line, body):
    owner = subject.brief.owner if isinstance(subject, BriefVersion) else None
    users = [user for user in (subject.created_by, owner) if user is not None]
    return notify.notify(users, subject_line, body, link=_link(subject))


# Drafts and edits.


def _next_number(brief) -> int:
    Brief.objects.select_for_update().filter(pk=brief.pk).first()
    last = brief.versions.order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


@transaction.atomic
def create_draft(brief, *, acting_user, from_version=None) -> BriefVersion:
    """Copy ``from_version`` (default: the latest version) into a new draft.

    A version still in review is withdrawn, with its approvals, because the
    new draft replaces it. An existing draft is refused: edit that one.
    """
    roles.require(acting_user, "edit_brief")
    number = _next_number(brief)
    open_version = brief.versions.filter(
        state__in=[State.DRAFT, State.IN_REVIEW]
    ).first()
    if open_version is not None and open_version.state == State.DRAFT:
        raise ActionRefused(
            f"{_label(open_version)} is already a draft. Edit that draft instead of "
            "starting another one."
        )
    if open_version is not None:
        withdraw_approvals(open_version, f"replaced by v{number}")
        _move(
            open_version,
            State.RETIRED,
            "withdraw",
            actor=acting_user,
            comment=f"Replaced by the new draft v{number}.",
        )
    source = from_version or brief.versions.order_by("-number").first()
    draft = BriefVersion(brief=brief, number=number, state=State.DRAFT, based_on=source)
    draft.created_by = _user(acting_user)
    for name in EDITABLE_FIELDS:
        value = getattr(source, name) if source else _empty_value(name)
        setattr(draft, name, json.loads(json.dumps(value)))
    draft.save()
    if source is not None:
        draft.triggers.set(source.triggers.all() or brief.triggers.all())
    else:
        draft.triggers.set(brief.triggers.all())
    audit(
        draft,
        "create",
        actor=acting_user,
        to_state=State.DRAFT,
        based_on=getattr(source, "number", None),
    )
    return draft


def _empty_value(name):
    return {
        "mapping": {},
        "command_schema": {"type": "object"},
        "acceptance": [],
        "read_back": {},
        "ready_condition": "",
        "command_type": "sales_order.create",
    }[name]


@transaction.atomic
def save_version(version, changes: dict, *, acting_user, trigger_ids=None, comment=""):
    """Apply ``changes`` to a draft, or to a new draft when ``version`` is not one.

    An edit during review returns the version to draft and withdraws its
    approvals. Approved, active and retired versions never change: the edit
    lands in a new draft. Returns the draft and its synthetic run.
    """
    roles.require(acting_user, "edit_brief")
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"Fields that cannot be edited: {', '.join(sorted(unknown))}.")
    version = _lock(version)
    if version.state not in (State.DRAFT, State.IN_REVIEW):
        version = create_draft(
            version.brief, acting_user=acting_user, from_version=version
        )
    elif version.state == State.IN_REVIEW:
        withdraw_approvals(version, "edited during review")
        _move(
            version,
            State.DRAFT,
            "reopen",
            actor=acting_user,
            comment="Edited during review.",
        )
    changed = [
        name
        for name in EDITABLE_FIELDS
        if name in changes and changes[name] != getattr(version, name)
    ]
    for name in changed:
        setattr(version, name, changes[name])
    version.save()
    if trigger_ids is not None:
        version.triggers.set(trigger_ids)
        changed.append("triggers")
    audit(version, "edit", actor=acting_user, comment=comment, fields=changed)
    run = synthetic.run_synthetic_tests(version, cause=SyntheticRun.Cause.SAVE)
    return version, run


def check(expression: str, allowed_variables) -> list[str]:
    return check_expression(expression, allowed_variables)


def expression_problems(version) -> list[str]:
    """Every problem ``check_expression`` and the schema check find in a version."""
    problems = []
    for name, expression in (version.mapping or {}).items():
        problems += [
            f"Mapping {name!r}: {p}" for p in check(expression, MAPPING_VARIABLES)
        ]
    if version.ready_condition:
        problems += [
            f"Ready condition: {p}"
            for p in check(version.ready_condition, MAPPING_VARIABLES)
        ]
    for item in version.acceptance or []:
        label = item.get("name", "acceptance check")
        allowed = ACCEPTANCE_VARIABLES | {"connector"}
        problems += [
            f"{label}: {p}" for p in check(item.get("expression", ""), allowed)
        ]
    problems += _schema_problems(version.command_schema)
    return problems


def _schema_problems(schema) -> list[str]:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return [f"Command schema: {exc.message}"]
    return []


# Review.


@transaction.atomic
def submit(version, *, acting_user, comment=""):
    """Send a draft to review; refused while expressions or synthetic tests fail."""
    roles.require(acting_user, "edit_brief")
    version = _lock(version)
    _require_state(version, State.DRAFT)
    problems = expression_problems(version)
    if problems:
        raise ActionRefused("Fix these before review: " + " ".join(problems[:5]))
    failing = synthetic.failing_tests_message(version)
    if failing:
        raise ActionRefused(failing)
    version.submitted_at = timezone.now()
    _move(version, State.IN_REVIEW, "submit", actor=acting_user, comment=comment)
    _notify_reviewers(
        version,
        [Side.CRM, Side.ERP],
        exclude_ids=authors(version),
        subject_line=f"Review {_label(version)}",
        body=f"{_label(version)} waits for your approval.\n\n{comment}".strip(),
    )
    return version


def _check_reviewer(subject, acting_user, side=None):
    if side is not None and not roles.has_role(acting_user, SIDE_ROLE[side]):
        raise ActionRefused(
            f"Only {SIDE_ROLE[side]} can approve the {Side(side).label.split(' (')[0]}."
        )
    if acting_user.pk in authors(subject):
        raise ActionRefused(
            f"You wrote or edited {_label(subject)}, so you cannot review it. "
            "Ask another Sales Ops or Finance member."
        )


@transaction.atomic
def approve(subject, *, side, acting_user, comment=""):
    """Approve one side; the second side's approval, by another person, approves."""
    subject = _lock(subject)
    side = Side(side)
    _require_state(subject, State.IN_REVIEW)
    _check_reviewer(subject, acting_user, side)
    standing = list(standing_approvals(subject))
    if any(a.side == side for a in standing):
        raise ActionRefused(
            f"The {side.label} of {_label(subject)} is already approved."
        )
    if any(a.user_id == acting_user.pk for a in standing):
        raise ActionRefused(
            "You already approved the other side. The two approvals "
            "need two different people."
        )
    if isinstance(subject, BriefVersion):
        failing = synthetic.failing_tests_message(subject)
        if failing:
            raise ActionRefused(failing)
    Approval.objects.create(
        **_subject_filter(subject),
        side=side,
        decision=Approval.Decision.APPROVE,
        user=acting_user,
        comment=comment,
    )
    audit(subject, "approve", actor=acting_user, comment=comment, side=side.value)
    if len(standing) + 1 < len(Side):
        return subject
    subject.approved_at = timezone.now()
    _move(subject, State.APPROVED, "both_sides_approved", actor=acting_user)
    _notify_author(
        subject,
        f"{_label(subject)} is approved",
        f"Both sides approved {_label(subject)}. It can now run in "
        "shadow, as a canary or go live.",
    )
    return subject


@transaction.atomic
def request_changes(subject, *, acting_user, comment):
    """Return a version in review to its author; withdraws every approval."""
    subject = _lock(subject)
    _require_state(subject, State.IN_REVIEW)
    if not roles.has_role(acting_user, roles.SALES_OPS, roles.FINANCE):
        raise ActionRefused("Only Sales Ops or Finance reviewers can request changes.")
    _check_reviewer(subject, acting_user)
    if not comment.strip():
        raise ActionRefused("Say what should change: the comment is required.")
    side = Side.CRM if roles.has_role(acting_user, roles.SALES_OPS) else Side.ERP
    withdraw_approvals(subject, "changes requested")
    Approval.objects.create(
        **_subject_filter(subject),
        side=side,
        decision=Approval.Decision.REQUEST_CHANGES,
        user=acting_user,
        comment=comment,
        withdrawn_at=timezone.now(),
        withdrawn_reason="a request for changes does not stand as an approval",
    )
    _move(subject, State.DRAFT, "request_changes", actor=acting_user, comment=comment)
    _notify_author(subject, f"Changes requested on {_label(subject)}", comment)
    return subject


# Release: shadow, canary, activation and rollback.


def schema_changed(version) -> bool:
    """True when the command schema or type differs from the active version's."""
    active = version.brief.active_version
    if active is None or active.pk == version.pk:
        return active is None
    return (active.command_schema, active.command_type) != (
        version.command_schema,
        version.command_type,
    )


def needs_canary(version) -> bool:
    policy = canary_policy()
    if policy == "always":
        return True
    if policy == "never":
        return False
    return schema_changed(version)


def business_units() -> list[str]:
    """Business units named in the routing table, for the canary choice."""
    values = Route.objects.filter(is_active=True).exclude(business_unit="")
    return sorted(set(values.values_list("business_unit", flat=True)))


@transaction.atomic
def start_shadow(version, *, acting_user, comment=""):
    roles.require(acting_user, "release_brief")
    version = _lock(version)
    _require_state(version, State.APPROVED)
    if version.is_shadow:
        raise ActionRefused(f"{_label(version)} already runs in shadow mode.")
    version.shadow_started_at = timezone.now()
    version.save(update_fields=["shadow_started_at"])
    audit(version, "shadow_start", actor=acting_user, comment=comment)
    return version


@transaction.atomic
def stop_shadow(version, *, acting_user, comment=""):
    roles.require(acting_user, "release_brief")
    version = _lock(version)
    if not version.is_shadow:
        raise ActionRefused(f"{_label(version)} does not run in shadow mode.")
    version.shadow_started_at = None
    version.save(update_fields=["shadow_started_at"])
    audit(version, "shadow_stop", actor=acting_user, comment=comment)
    return version


@transaction.atomic
def start_canary(version, *, business_unit, acting_user, comment=""):
    """Run an approved version for one business unit; the others keep the active one."""
    roles.require(acting_user, "release_brief")
    version = _lock(version)
    _require_state(version, State.APPROVED)
    units = business_units()
    if business_unit not in units:
        known = ", ".join(units) or "none"
        raise ActionRefused(
            f"The routing table has no business unit "
            f"{business_unit!r} (it has: {known}). "
            "Pick one of those, or add a route for it in admin."
        )
    other = (
        version.brief.versions.exclude(pk=version.pk)
        .exclude(canary_business_unit="")
        .first()
    )
    if other is not None:
        raise ActionRefused(
            f"{_label(other)} already runs as the canary for "
            f"{other.canary_business_unit}. "
            "Stop that canary first."
        )
    version.canary_business_unit = business_unit
    version.canary_started_at = timezone.now()
    version.save(update_fields=["canary_business_unit", "canary_started_at"])
    audit(
        version,
        "canary_start",
        actor=acting_user,
        comment=comment,
        business_unit=business_unit,
    )
    _notify_author(
        version,
        f"{_label(version)} runs as a canary for {business_unit}",
        f"{_label(version)} now runs for {business_unit}; compare "
        f"its rates on the brief page.",
    )
    return version


@transaction.atomic
def stop_canary(version, *, acting_user, comment=""):
    roles.require(acting_user, "release_brief")
    version = _lock(version)
    if not version.is_canary:
        raise ActionRefused(f"{_label(version)} does not run as a canary.")
    unit = version.canary_business_unit
    version.canary_business_unit = ""
    version.save(update_fields=["canary_business_unit"])
    audit(
        version, "canary_stop", actor=acting_user, comment=comment, business_unit=unit
    )
    return version


def _make_active(version, *, acting_user, action, comment, **detail):
    brief = version.brief
    previous = brief.versions.select_for_update().filter(state=State.ACTIVE).first()
    if previous is not None:
        note = f"Replaced by v{version.number}."
        if not previous.was_approved:
            # Created active directly (the demo, an import or admin): it ran, so
            # it counts as approved by the system and can be rolled back to.
            previous.activated_at = previous.created_at
            note += " It was created active without a recorded sign-off."
        _move(previous, State.RETIRED, "retire", actor=acting_user, comment=note)
    version.activated_at = timezone.now()
    version.canary_business_unit = ""
    version.shadow_started_at = None
    _move(
        version,
        State.ACTIVE,
        action,
        actor=acting_user,
        comment=comment,
        previous=getattr(previous, "number", None),
        **detail,
    )
    bound = list(version.triggers.all())
    if bound:
        brief.triggers.set(bound)
    _notify_author(
        version,
        f"{_label(version)} is active",
        f"{_label(version)} is now the version the pipeline "
        f"runs for every business unit.",
    )
    return version


@transaction.atomic
def activate(version, *, acting_user, comment=""):
    """Make an approved version active everywhere, after a canary if required."""
    roles.require(acting_user, "release_brief")
    version = _lock(version)
    _require_state(version, State.APPROVED)
    if needs_canary(version) and version.canary_started_at is None:
        why = (
            "changes the command schema"
            if canary_policy() == "schema_change"
            else "is new"
        )
        raise ActionRefused(
            f"{_label(version)} {why}, so the canary policy requires it to run as a "
            "canary for one business unit before it becomes active everywhere."
        )
    return _make_active(
        version,
        acting_user=acting_user,
        action="activate",
        comment=comment,
        after_canary=version.canary_business_unit or None,
    )


@transaction.atomic
def rollback(version, *, acting_user, reason):
    """Make an earlier approved version active again in one step."""
    roles.require(acting_user, "release_brief")
    version = _lock(version)
    if not reason.strip():
        raise ActionRefused("Say why you roll back: the reason is required.")
    _require_state(version, State.RETIRED, State.APPROVED)
    if not version.was_approved:
        raise ActionRefused(
            f"{_label(version)} was never approved, so it cannot be rolled back to."
        )
    return _make_active(
        version, acting_user=acting_user, action="rollback", comment=reason
    )


# Trigger changes follow the same rules.


@transaction.atomic
def propose_trigger_change(
    trigger, *, condition, object_type=None, reason="", acting_user
):
    """Start or update the open change of a trigger's condition."""
    roles.require(acting_user, "edit_brief")
    problems = check(condition, TRIGGER_VARIABLES)
    if problems:
        raise ActionRefused("The condition is not usable: " + " ".join(problems))
    change = (
        trigger.changes.select_for_update()
        .filter(state__in=[State.DRAFT, State.IN_REVIEW])
        .first()
    )
    if change is None:
        last = (
            trigger.changes.order_by("-number").values_list("number", flat=True).first()
        )
        change = TriggerChange(
            trigger=trigger, number=(last or 0) + 1, created_by=_user(acting_user)
        )
        action = "create"
    else:
        action = "edit"
        if change.state == State.IN_REVIEW:
            withdraw_approvals(change, "edited during review")
            _move(
                change,
                State.DRAFT,
                "reopen",
                actor=acting_user,
                comment="Edited during review.",
            )
    change.condition = condition
    change.object_type = object_type or trigger.object_type
    change.reason = reason
    change.save()
    audit(change, action, actor=acting_user, to_state=change.state, condition=condition)
    return change


@transaction.atomic
def submit_trigger_change(change, *, acting_user, comment=""):
    roles.require(acting_user, "edit_brief")
    change = _lock(change)
    _require_state(change, State.DRAFT)
    change.submitted_at = timezone.now()
    _move(change, State.IN_REVIEW, "submit", actor=acting_user, comment=comment)
    _notify_reviewers(
        change,
        [Side.CRM, Side.ERP],
        exclude_ids=authors(change),
        subject_line=f"Review {_label(change)}",
        body=f"New condition: {change.condition}",
    )
    return change


@transaction.atomic
def activate_trigger_change(change, *, acting_user, comment="", rollback_reason=""):
    """Write an approved (or, for a rollback, retired) change into the trigger."""
    roles.require(acting_user, "release_brief")
    change = _lock(change)
    if rollback_reason:
        _require_state(change, State.RETIRED, State.APPROVED)
    else:
        _require_state(change, State.APPROVED)
    if not change.was_approved:
        raise ActionRefused(f"{_label(change)} was never approved.")
    trigger = change.trigger
    for previous in trigger.changes.select_for_update().filter(state=State.ACTIVE):
        _move(previous, State.RETIRED, "retire", actor=acting_user)
    trigger.condition, trigger.object_type = change.condition, change.object_type
    save_trigger(trigger, acting_user=acting_user)
    change.trigger_version = trigger.current_version
    change.activated_at = timezone.now()
    action = "rollback" if rollback_reason else "activate"
    _move(
        change,
        State.ACTIVE,
        action,
        actor=acting_user,
        comment=rollback_reason or comment,
    )
    return change


# What waits on whom.


def waiting_on(user, version) -> str:
    """The action ``version`` waits for from ``user``, in a few words, or ""."""
    state = version.state
    if state == State.IN_REVIEW:
        sides = _open_sides(version)
        if user.pk in _author_ids(version):
            return ""
        for side in sides:
            if roles.has_role(user, SIDE_ROLE[side]):
                return f"Your {Side(side).label.split(' (')[0]} approval"
        return ""
    mine = user.pk in (version.created_by_id, version.brief.owner_id)
    if state == State.DRAFT and mine:
        return "Your changes and submission"
    if state == State.APPROVED and mine and not version.is_canary:
        return "Release: canary or go live"
    if state == State.APPROVED and mine:
        return f"Canary for {version.canary_business_unit}: go live or stop"
    return ""


def _open_sides(version):
    given = getattr(version, "approved_sides", None)
    if given is None:
        given = {a.side for a in standing_approvals(version)}
    return [side for side in Side if side.value not in given]


def _author_ids(version):
    ids = getattr(version, "author_ids", None)
    return ids if ids is not None else authors(version)
