"""Dry runs of brief versions and the field-level diff of their commands.

A dry run maps and validates with the pipeline's own ``transform`` and
``validate`` and writes nothing: no sync run, no ledger row, no outbox row.
The shadow diff replays stored events through a candidate version and the
active one; shadow mode does the same on live events and keeps the result.
"""

import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction

from meshline import money
from meshline.expressions import Evaluator, ExpressionError, to_cel_value
from syncflows.models import (
    BriefVersion,
    RecordChange,
    ShadowDiff,
    ShadowResult,
    SyncRun,
)
from syncflows.services.config import load_config

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_SIZE = 200
MAX_SAMPLE_SIZE = 2000


@dataclass
class Outcome:
    """The outcome of one version on one input: a command, or a reason code."""

    payload: dict | None = None
    reason_code: str = ""
    message: str = ""
    detail: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.payload is not None


def dry_run(version, variables: dict, config) -> Outcome:
    """Map and validate ``variables`` with ``version``; never write anything.

    NOTE: a version's ``read_back`` calls the CRM, so dry runs skip it and
    map only what the stored event or example payload holds.
    """
    from syncflows.services.pipeline import RunFailed, transform, validate

    evaluator = Evaluator(variables, config.lookups, config.missing_reasons)
    try:
        if version.ready_condition:
            ready = evaluator.evaluate(version.ready_condition, name="ready condition")
            if ready is not True:
                return Outcome(
                    reason_code="waiting", message="The ready condition is false."
                )
        payload = transform(evaluator, version)
        validate(evaluator, version, payload)
    except RunFailed as exc:
        return Outcome(
            reason_code=exc.reason_code, message=exc.message, detail=exc.detail
        )
    except ExpressionError as exc:
        return Outcome(reason_code="schema_invalid", message=exc.message)
    return Outcome(payload=payload)


def replay_variables(change) -> dict:
    """Build the mapping variables of a stored change, with the record as it left it."""
    from syncflows.services.pipeline import mapping_variables

    variables = mapping_variables(change.record, change)
    # The pipeline maps the record's latest state; a replay shows what this
    # event mapped to, so it uses the change's own snapshot. Children are
    # the record's current children.
    variables["record"] = to_cel_value(change.state)
    return variables


# Field-level differences between two commands.


def diff_values(before, after, path: str = "") -> list[dict]:
    """Return ``{"path", "before", "after"}`` for every leaf that differs."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after), key=str):
            found += diff_values(
                before.get(key), after.get(key), f"{path}.{key}" if path else str(key)
            )
        return found
    if isinstance(before, list) and isinstance(after, list):
        found = []
        for index in range(max(len(before), len(after))):
            left = before[index] if index < len(before) else None
            right = after[index] if index < len(after) else None
            found += diff_values(left, right, f"{path}[{index + 1}]")
        return found
    if _same(before, after):
        return []
    return [{"path": path or "command", "before": before, "after": after}]


def _same(before, after) -> bool:
    if before == after:
        return True
    # "10.0" and "10.00" are the same amount.
    if isinstance(before, str) and isinstance(after, str):
        try:
            return money.to_decimal(before) == money.to_decimal(after)
        except money.MoneyError:
            return False
    return False


def compare(record_key: str, before: Outcome, after: Outcome) -> dict | None:
    """Describe how ``after`` differs from ``before`` for one record; None if alike."""
    differences = (
        diff_values(before.payload, after.payload) if before.ok and after.ok else []
    )
    if before.ok and after.ok and not differences:
        return None
    if not before.ok and not after.ok and before.reason_code == after.reason_code:
        return None
    row = {
        "record_key": record_key,
        "before_reason": before.reason_code,
        "after_reason": after.reason_code,
        "after_message": after.message,
        "differences": differences,
        "kind": _kind(before, after),
    }
    row.update(_totals(before.payload, after.payload))
    row.update(_skus(before.payload, after.payload))
    return row


def _kind(before: Outcome, after: Outcome) -> str:
    if before.ok and not after.ok:
        return "new_exception"
    if not before.ok and after.ok:
        return "fixed_exception"
    if not before.ok:
        return "other_exception"
    return "changed"


def _totals(before, after) -> dict:
    total_before = (before or {}).get("total")
    total_after = (after or {}).get("total")
    delta = None
    try:
        if total_before is not None and total_after is not None:
            delta = str(money.to_decimal(total_after) - money.to_decimal(total_before))
    except money.MoneyError:
        delta = None
    return {
        "total_before": total_before,
        "total_after": total_after,
        "total_delta": delta,
    }


def _skus(before, after) -> dict:
    skus_before = [line.get("sku") for line in (before or {}).get("lines") or []]
    skus_after = [line.get("sku") for line in (after or {}).get("lines") or []]
    return {
        "skus_added": sorted(set(skus_after) - set(skus_before), key=str),
        "skus_removed": sorted(set(skus_before) - set(skus_after), key=str),
        "lines_before": len(skus_before),
        "lines_after": len(skus_after),
    }


def summarise(rows: list[dict], compared: int) -> dict:
    by_kind = {kind: 0 for kind in ("changed", "new_exception", "fixed_exception")}
    net = Decimal(0)
    total_changes = 0
    for row in rows:
        by_kind[row["kind"]] = by_kind.get(row["kind"], 0) + 1
        if (
            row.get("total_delta") not in (None, "0")
            and Decimal(row["total_delta"]) != 0
        ):
            total_changes += 1
            net += Decimal(row["total_delta"])
    return {
        "compared": compared,
        "differing": len(rows),
        "unchanged": compared - len(rows),
        "totals_changed": total_changes,
        "net_total_delta": str(net),
        **by_kind,
    }


# The shadow diff over stored events.


def matched_changes(brief, sample_size: int) -> list:
    """Return the latest ``sample_size`` stored changes the brief's triggers matched,
    keeping one change per CRM record (its latest), newest first."""
    change_ids = list(
        SyncRun.objects.filter(brief_version__brief=brief)
        .order_by("-change_id")
        .values_list("change_id", flat=True)
        .distinct()[:sample_size]
    )
    changes = (
        RecordChange.objects.filter(pk__in=change_ids)
        .select_related("event", "record__connector")
        .order_by("-pk")
    )
    latest, seen = [], set()
    for change in changes:
        if change.record_id not in seen:
            seen.add(change.record_id)
            latest.append(change)
    return latest


def run_shadow_diff(
    version, *, sample_size=DEFAULT_SAMPLE_SIZE, acting_user=None
) -> ShadowDiff:
    """Replay stored events through ``version`` and the active one; store the diff."""
    sample_size = max(1, min(int(sample_size), MAX_SAMPLE_SIZE))
    brief = version.brief
    baseline = brief.active_version
    config = load_config()
    rows = []
    with transaction.atomic():
        changes = matched_changes(brief, sample_size)
        for change in changes:
            variables = replay_variables(change)
            after = dry_run(version, variables, config)
            before = (
                dry_run(baseline, variables, config)
                if baseline
                else Outcome(
                    reason_code="no_active_version",
                    message="The brief has no active version.",
                )
            )
            row = compare(change.record.record_key, before, after)
            if row is not None:
                row["change_id"] = change.pk
                rows.append(row)
        # Mapping reads lookups and children only; roll back all the same, so
        # nothing a future helper writes can escape a dry run.
        transaction.set_rollback(True)
    diff = ShadowDiff.objects.create(
        version=version,
        baseline=baseline,
        sample_size=sample_size,
        summary=summarise(rows, len(changes)),
        rows=rows,
        requested_by=acting_user
        if acting_user and acting_user.is_authenticated
        else None,
    )
    logger.info(
        "Shadow diff %s of %s against %s: %s of %s records differ",
        diff.pk,
        version,
        baseline,
        len(rows),
        len(changes),
    )
    return diff


# Shadow mode on live events.


def record_shadow(version, change, record, config, live_version) -> ShadowResult | None:
    """Map a live change with a shadow version beside the live one; store the diff.

    Runs in a savepoint, so a broken shadow version never fails the live run.
    """
    from syncflows.services.pipeline import mapping_variables

    try:
        with transaction.atomic():
            variables = mapping_variables(record, change)
            after = dry_run(version, variables, config)
            before = (
                dry_run(live_version, variables, config)
                if live_version
                else Outcome(reason_code="no_active_version")
            )
            row = compare(record.record_key, before, after)
            return ShadowResult.objects.create(
                version=version,
                active_version=live_version,
                change=change,
                record_key=record.record_key,
                payload=after.payload,
                reason_code=after.reason_code,
                active_reason_code=before.reason_code,
                differences=(row or {}).get("differences", []),
                differs=row is not None,
            )
    except Exception:
        logger.exception("Shadow run of %s on change %s failed", version, change.pk)
        return None


def shadow_summary(version) -> dict:
    results = ShadowResult.objects.filter(version=version)
    total = results.count()
    differing = results.filter(differs=True).count()
    new_exceptions = (
        results.exclude(reason_code="").filter(active_reason_code="").count()
    )
    return {
        "total": total,
        "differing": differing,
        "same": total - differing,
        "new_exceptions": new_exceptions,
        "latest": list(results.filter(differs=True)[:20]),
    }


def versions_in_shadow():
    return BriefVersion.objects.filter(shadow_started_at__isnull=False)
