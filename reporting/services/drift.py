"""Schema drift: compare what deliveries carry with each declared schema.

Two checks find drift. The dispatch guard checks the record behind every
command before it is sent, and holds the command when a field that an
active brief uses was removed, renamed or retyped. The nightly run
aggregates the fields that the last day's record changes carried and
reports every difference, used or not.
"""

import difflib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from reporting.models import DeclaredSchema, DriftFinding, ObservedField
from reporting.services.fields import fields_of_version, json_type, types_agree
from syncflows.models import BriefVersion, LedgerEntry, RecordChange
from syncflows.services import ledger

logger = logging.getLogger(__name__)
Kind = DriftFinding.Kind


@dataclass(frozen=True)
class Difference:
    kind: str
    field_name: str
    new_name: str = ""
    declared_type: str = ""
    observed_type: str = ""


def briefs_using(connector, object_type: str) -> dict[int, set[str]]:
    """Return ``{brief_id: fields}`` for the active briefs fed by this source.

    A brief is fed when one of its triggers watches the object type and the
    connector (a trigger without a connector watches every connector).
    """
    versions = (
        BriefVersion.objects.filter(
            state=BriefVersion.State.ACTIVE,
            brief__triggers__object_type=object_type,
            brief__triggers__is_active=True,
        )
        .filter(
            Q(brief__triggers__connector=connector)
            | Q(brief__triggers__connector__isnull=True)
        )
        .distinct()
    )
    return {version.brief_id: fields_of_version(version) for version in versions}


def compare_record(declared: dict, state: dict) -> list[Difference]:
    """Compare one delivered record's fields with the declared fields.

    A required declared field that the record lacks is removed, or renamed
    when an undeclared field of the same type has a similar name.
    """
    added = {
        name: json_type(value) for name, value in state.items() if name not in declared
    }
    missing = [
        name
        for name, spec in declared.items()
        if name not in state and spec.get("required")
    ]
    differences = _removals(declared, missing, added)
    renamed_to = {d.new_name for d in differences if d.kind == Kind.RENAMED}
    for name, observed in added.items():
        if name not in renamed_to:
            differences.append(Difference(Kind.ADDED, name, observed_type=observed))
    for name, spec in declared.items():
        if name in state:
            observed = json_type(state[name])
            if not types_agree(spec.get("type", ""), observed):
                differences.append(
                    Difference(Kind.RETYPED, name, "", spec.get("type", ""), observed)
                )
    return differences


def _removals(declared: dict, missing, added: dict) -> list[Difference]:
    differences = []
    candidates = dict(added)
    for name in missing:
        declared_type = declared[name].get("type", "")
        same_type = [n for n, t in candidates.items() if types_agree(declared_type, t)]
        match = difflib.get_close_matches(name, same_type, n=1, cutoff=0.6)
        if match:
            new_name = match[0]
            differences.append(
                Difference(
                    Kind.RENAMED,
                    name,
                    new_name,
                    declared_type,
                    candidates.pop(new_name),
                )
            )
        else:
            differences.append(Difference(Kind.REMOVED, name, "", declared_type))
    return differences


def blocks(difference: Difference, used: set[str]) -> bool:
    """An added field breaks no mapping; any other change to a used field does."""
    return difference.kind != Kind.ADDED and difference.field_name in used


def record_findings(connector, object_type, differences, *, record_key="", now=None):
    """Open (or refresh) one finding per difference; return the blocking ones."""
    now = now or timezone.now()
    using = briefs_using(connector, object_type)
    blocking = []
    for difference in differences:
        brief_ids = [b for b, used in using.items() if blocks(difference, used)]
        finding = _open_finding(connector, object_type, difference, record_key, now)
        if brief_ids and not finding.blocking:
            finding.blocking = True
            finding.save(update_fields=["blocking"])
        if brief_ids:
            finding.briefs.add(*brief_ids)
            blocking.append(finding)
    return blocking


def _open_finding(connector, object_type, difference, record_key, now):
    finding, created = DriftFinding.objects.get_or_create(
        connector=connector,
        object_type=object_type,
        kind=difference.kind,
        field_name=difference.field_name,
        state=DriftFinding.State.OPEN,
        defaults={
            "new_name": difference.new_name,
            "declared_type": difference.declared_type,
            "observed_type": difference.observed_type,
            "record_key": record_key,
            "detected_at": now,
            "last_seen_at": now,
        },
    )
    if created:
        logger.warning(
            "Drift on %s:%s: %s %s (finding %s)",
            connector.slug,
            object_type,
            difference.kind,
            difference.field_name,
            finding.pk,
        )
    else:
        DriftFinding.objects.filter(pk=finding.pk).update(last_seen_at=now)
    return finding


# How often one worker process records the same field set of one connector
# and object type again. Every command would otherwise update the same few
# ObservedField rows, and workers would queue on their row locks.
OBSERVE_EVERY_SECONDS = 60
_last_observed: dict = {}


def observe(connector, object_type: str, values: dict, now, *, sample=False) -> None:
    """Count each field and JSON type in ``values`` as seen now.

    With ``sample`` (the dispatch guard), an identical field set is counted at
    most once a minute per worker process, so ``seen_count`` is then a count
    of sampled observations, not of every delivery."""
    pairs = frozenset((n, json_type(v)) for n, v in values.items())
    if sample:
        key = (connector.pk, object_type, pairs)
        last = _last_observed.get(key)
        moment = time.monotonic()
        if last is not None and moment - last < OBSERVE_EVERY_SECONDS:
            return
        _last_observed[key] = moment
        if len(_last_observed) > 10_000:
            _last_observed.clear()
    observe_pairs(connector, object_type, set(pairs), now)


def observe_pairs(connector, object_type: str, seen: set, now) -> None:
    """Count each ``(field, json type)`` pair as seen now."""
    if not seen:
        return
    ObservedField.objects.bulk_create(
        [
            ObservedField(
                connector=connector,
                object_type=object_type,
                name=name,
                json_type=kind,
                first_seen=now,
                last_seen=now,
            )
            for name, kind in seen
        ],
        ignore_conflicts=True,
    )
    ObservedField.objects.filter(
        connector=connector,
        object_type=object_type,
        name__in={name for name, _kind in seen},
    ).filter(_pairs_filter(seen)).update(last_seen=now, seen_count=F("seen_count") + 1)


def _pairs_filter(pairs) -> Q:
    condition = Q()
    for name, kind in pairs:
        condition |= Q(name=name, json_type=kind)
    return condition


# The dispatch guard.


def drift_guard(command, *, checked=False):
    """Hold a command whose brief reads a field that drifted; see failures.py.
    ``checked`` means the record was already compared with its schema."""
    record = command.record
    brief_id = command.brief_version.brief_id
    if not checked:
        _check_record(record)
    # Asked for every command, never cached: a hold must not be missed.
    findings = list(
        DriftFinding.objects.filter(
            state=DriftFinding.State.OPEN, blocking=True, briefs=brief_id
        ).order_by("id")
    )
    if not findings:
        return None
    described = "; ".join(_describe(finding) for finding in findings)
    return (
        "drift_blocked",
        f"The CRM changed fields that brief {command.brief_version.brief.slug} uses: "
        f"{described}. Writes for this brief are held until a Sales Ops user reviews "
        "the drift report.",
    )


def drift_guard_many(commands) -> dict:
    """Check a batch of commands with a fixed number of queries when nothing
    has drifted; return the single guard's verdict for each held command."""
    records = {command.record_id: command.record for command in commands}
    pairs = {(record.connector_id, record.object_type) for record in records.values()}
    schemas = {
        (schema.connector_id, schema.object_type): schema
        for schema in DeclaredSchema.objects.filter(
            connector_id__in={connector for connector, _type in pairs},
            object_type__in={object_type for _connector, object_type in pairs},
        )
    }
    for record in records.values():
        _check_record(record, schemas.get((record.connector_id, record.object_type), False))
    brief_ids = {command.brief_version.brief_id for command in commands}
    blocked = set(
        DriftFinding.objects.filter(
            state=DriftFinding.State.OPEN, blocking=True, briefs__in=brief_ids
        ).values_list("briefs", flat=True)
    )
    return {
        command.pk: drift_guard(command, checked=True)
        for command in commands
        if command.brief_version.brief_id in blocked
    }


def _check_record(record, schema=None) -> None:
    """Observe the record's fields and record how they differ from the declared
    schema. ``schema`` is the declared schema when the caller has read it, or
    False when there is none."""
    if schema is None:
        schema = DeclaredSchema.objects.filter(
            connector_id=record.connector_id, object_type=record.object_type
        ).first()
    now = timezone.now()
    observe(record.connector, record.object_type, record.state, now, sample=True)
    if not schema:
        return
    differences = compare_record(schema.fields, record.state)
    if differences:
        with transaction.atomic():
            record_findings(
                record.connector,
                record.object_type,
                differences,
                record_key=record.record_key,
                now=now,
            )


def _describe(finding) -> str:
    if finding.kind == Kind.RENAMED:
        return f"{finding.field_name} renamed to {finding.new_name}"
    if finding.kind == Kind.RETYPED:
        return (
            f"{finding.field_name} changed from {finding.declared_type} "
            f"to {finding.observed_type}"
        )
    return f"{finding.field_name} {finding.get_kind_display().lower()}"


describe = _describe


# The nightly run.


def run_nightly(now=None) -> dict:
    """Compare the fields of recent record changes with every declared schema."""
    now = now or timezone.now()
    since = now - timedelta(hours=settings.MESHLINE_DRIFT_WINDOW_HOURS)
    observed = _observed_since(since)
    found = 0
    for schema in DeclaredSchema.objects.select_related("connector"):
        key = (schema.connector_id, schema.object_type)
        if key not in observed:
            continue  # no delivery in the window: nothing to compare
        seen = observed[key]
        pairs = {(name, kind) for name, kinds in seen.items() for kind in kinds}
        observe_pairs(schema.connector, schema.object_type, pairs, now)
        differences = compare_window(schema.fields, seen)
        record_findings(schema.connector, schema.object_type, differences, now=now)
        found += len(differences)
    logger.info("Nightly drift check found %s difference(s) since %s", found, since)
    return {"differences": found, "sources": len(observed)}


def _observed_since(since) -> dict:
    """Return ``{(connector_id, object_type): {field: {json types}}}``.

    A change carries the fields it set or changed, and every field of a
    record it created. NOTE: a field that deliveries repeat with an unchanged
    value is not counted again, so a field that never changes and belongs
    only to old records can look removed; declare such fields optional.
    """
    observed: dict = {}
    changes = (
        RecordChange.objects.filter(created_at__gte=since)
        .exclude(status=RecordChange.Status.STALE)
        .values_list(
            "record__connector_id",
            "record__object_type",
            "change_type",
            "changed",
            "state",
        )
        .order_by()
    )
    for connector_id, object_type, change_type, changed, state in changes.iterator(
        2000
    ):
        fields = observed.setdefault((connector_id, object_type), {})
        names = state.keys() if change_type == "create" else changed
        for name in names:
            if name in state:
                fields.setdefault(name, set()).add(json_type(state[name]))
    return observed


def compare_window(declared: dict, seen: dict) -> list[Difference]:
    """Compare the fields seen over a window with the declared fields."""
    added = {
        name: _main_type(kinds) for name, kinds in seen.items() if name not in declared
    }
    missing = [name for name in declared if name not in seen]
    differences = _removals(declared, missing, added)
    renamed_to = {d.new_name for d in differences if d.kind == Kind.RENAMED}
    for name, observed in added.items():
        if name not in renamed_to:
            differences.append(Difference(Kind.ADDED, name, observed_type=observed))
    for name, spec in declared.items():
        for observed in sorted(seen.get(name, ())):
            if not types_agree(spec.get("type", ""), observed):
                differences.append(
                    Difference(Kind.RETYPED, name, "", spec.get("type", ""), observed)
                )
    return differences


def _main_type(kinds: set[str]) -> str:
    real = sorted(kinds - {"null"})
    return real[0] if real else "null"


# Review and release.


def review_finding(finding, *, acting_user, note: str = "") -> DriftFinding:
    """Accept a finding: the declared schema takes the observed change."""
    from meshline.roles import ADMIN, SALES_OPS, has_role

    if not has_role(acting_user, SALES_OPS, ADMIN):
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied("Reviewing drift needs the Sales Ops or Admin role.")
    with transaction.atomic():
        finding = DriftFinding.objects.select_for_update().get(pk=finding.pk)
        if finding.state != DriftFinding.State.OPEN:
            return finding
        _accept(finding, acting_user)
        finding.state = DriftFinding.State.REVIEWED
        finding.reviewed_by = acting_user
        finding.reviewed_at = timezone.now()
        finding.review_note = note
        finding.save(
            update_fields=["state", "reviewed_by", "reviewed_at", "review_note"]
        )
        ledger.write(
            LedgerEntry.Step.ACTION,
            f"{acting_user} reviewed drift finding {finding.pk}: {_describe(finding)}.",
            record_key=finding.record_key,
            connector=finding.connector,
            actor=acting_user,
        )
    logger.info("User %s reviewed drift finding %s", acting_user.pk, finding.pk)
    return finding


def _accept(finding, acting_user) -> None:
    schema, _ = DeclaredSchema.objects.select_for_update().get_or_create(
        connector=finding.connector, object_type=finding.object_type
    )
    fields = dict(schema.fields)
    spec = dict(fields.pop(finding.field_name, {}))
    if finding.kind == Kind.RENAMED:
        fields[finding.new_name] = {
            **spec,
            "type": finding.observed_type or spec.get("type"),
        }
    elif finding.kind == Kind.RETYPED:
        fields[finding.field_name] = {**spec, "type": finding.observed_type}
    elif finding.kind == Kind.ADDED:
        fields[finding.field_name] = {"type": finding.observed_type, "required": False}
    schema.fields = fields
    schema.updated_by = acting_user
    schema.save(update_fields=["fields", "updated_at", "updated_by"])


def held_commands(brief_id: int):
    from syncflows.models import Command

    return Command.objects.filter(
        brief_version__brief_id=brief_id,
        state=Command.State.HELD,
        reason_code="drift_blocked",
    )


def release_brief(brief_id: int, *, acting_user) -> int:
    """Queue every command held by drift for a brief again, once reviewed."""
    from syncflows.services.dispatch import release_held

    if DriftFinding.objects.filter(
        state=DriftFinding.State.OPEN, blocking=True, briefs=brief_id
    ).exists():
        raise ValueError(
            f"Brief {brief_id} still has drift waiting for review; review it first."
        )
    ids = list(held_commands(brief_id).order_by("id").values_list("id", flat=True))
    return release_held(ids, acting_user=acting_user) if ids else 0
