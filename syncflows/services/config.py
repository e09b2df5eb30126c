"""The pipeline's configuration, loaded once per batch of changes.

Triggers, active brief versions, lookup tables and routes change rarely and
are read for every change, so a batch loads them with a fixed number of
queries instead of a few queries per change.
"""

import functools
import hashlib
import json
from dataclasses import dataclass, field

import jsonschema
from django.db.models import Q

from syncflows.models import BriefVersion, LookupRow, LookupTable, Route, Trigger


@dataclass
class PipelineConfig:
    triggers: list = field(default_factory=list)  # (Trigger, TriggerVersion | None)
    versions_by_trigger: dict = field(default_factory=dict)  # trigger id → [BriefVersion]
    lookups: dict = field(default_factory=dict)  # slug → {key: value}
    missing_reasons: dict = field(default_factory=dict)  # slug → reason code
    routes: list = field(default_factory=list)
    # Approved versions beside the active ones: a canary runs instead of the
    # active version for its business unit; a shadow version runs beside it
    # and is only stored and diffed.
    active_by_brief: dict = field(default_factory=dict)  # brief id → BriefVersion
    canary_by_brief: dict = field(default_factory=dict)  # brief id → BriefVersion
    canaries_by_trigger: dict = field(default_factory=dict)  # trigger id → [BriefVersion]
    shadows_by_trigger: dict = field(default_factory=dict)  # trigger id → [BriefVersion]

    def versions_for(self, trigger_id: int, business_unit: str) -> list:
        """The versions to run for a trigger match in a business unit: per brief,
        its canary when the canary is for this unit, else its active version."""
        chosen = []
        for version in self.versions_by_trigger.get(trigger_id, []):
            canary = self.canary_by_brief.get(version.brief_id)
            if canary is None or canary.canary_business_unit != business_unit:
                chosen.append(version)
        for canary in self.canaries_by_trigger.get(trigger_id, []):
            if canary.canary_business_unit == business_unit:
                chosen.append(canary)
        return chosen

    def live_version(self, brief_id: int, business_unit: str):
        canary = self.canary_by_brief.get(brief_id)
        if canary is not None and canary.canary_business_unit == business_unit:
            return canary
        return self.active_by_brief.get(brief_id)

    def triggers_for(self, namespace: str, object_type: str):
        """Yield active triggers for an object type in a connector namespace; a
        trigger bound to a connector matches every connector of its namespace."""
        for trigger in self.triggers:
            if trigger.object_type != object_type:
                continue
            if trigger.connector is not None and trigger.connector.record_namespace != namespace:
                continue
            yield trigger

    def route_for(self, business_unit: str, region: str, object_type: str):
        candidates = [
            route
            for route in self.routes
            if route.business_unit in ("", business_unit)
            and route.region in ("", region)
            and route.object_type in ("", object_type)
        ]
        if not candidates:
            return None
        # Most specific first; then the lower priority number; then the older row.
        candidates.sort(key=lambda r: (-r.specificity, r.priority, r.pk))
        return candidates[0]


def load_config() -> PipelineConfig:
    config = PipelineConfig()
    config.triggers = list(
        Trigger.objects.filter(is_active=True).select_related("current_version", "connector")
    )
    versions = BriefVersion.objects.filter(state=BriefVersion.State.ACTIVE).select_related(
        "brief"
    )
    by_brief = {version.brief_id: version for version in versions}
    through = Trigger.briefs.through.objects.filter(
        trigger_id__in=[t.pk for t in config.triggers]
    ).values_list("trigger_id", "brief_id")
    for trigger_id, brief_id in through:
        if brief_id in by_brief:
            config.versions_by_trigger.setdefault(trigger_id, []).append(by_brief[brief_id])
    config.active_by_brief = by_brief
    _load_rollouts(config, through)
    config.lookups, config.missing_reasons = _load_lookups()
    config.routes = list(
        Route.objects.filter(is_active=True, destination__is_active=True).select_related(
            "destination"
        )
    )
    return config


def _load_rollouts(config, brief_triggers) -> None:
    """Add canary and shadow versions; each runs on its own trigger binding,
    or on the brief's triggers when it has none."""
    rollouts = list(
        BriefVersion.objects.filter(state=BriefVersion.State.APPROVED)
        .filter(~Q(canary_business_unit="") | Q(shadow_started_at__isnull=False))
        .select_related("brief")
    )
    if not rollouts:
        return
    trigger_ids = {t.pk for t in config.triggers}
    bound: dict = {}
    for version_id, trigger_id in BriefVersion.triggers.through.objects.filter(
        briefversion_id__in=[v.pk for v in rollouts]
    ).values_list("briefversion_id", "trigger_id"):
        bound.setdefault(version_id, set()).add(trigger_id)
    by_brief: dict = {}
    for trigger_id, brief_id in brief_triggers:
        by_brief.setdefault(brief_id, set()).add(trigger_id)
    for version in rollouts:
        triggers = bound.get(version.pk) or by_brief.get(version.brief_id, set())
        if version.canary_business_unit:
            config.canary_by_brief[version.brief_id] = version
        for trigger_id in triggers & trigger_ids:
            if version.canary_business_unit:
                config.canaries_by_trigger.setdefault(trigger_id, []).append(version)
            if version.shadow_started_at is not None:
                config.shadows_by_trigger.setdefault(trigger_id, []).append(version)


_lookup_cache: dict = {"versions": None, "tables": {}, "reasons": {}}


def _load_lookups():
    """Return every lookup table, reloading only the tables whose version moved."""
    tables = list(LookupTable.objects.values_list("pk", "slug", "version", "missing_reason"))
    versions = {pk: version for pk, _, version, _ in tables}
    cached = _lookup_cache["versions"] or {}
    stale = [pk for pk, version in versions.items() if cached.get(pk) != version]
    if stale or set(cached) != set(versions):
        slugs = {pk: slug for pk, slug, _, _ in tables}
        fresh = {slugs[pk]: {} for pk in stale}
        for table_id, key, value in LookupRow.objects.filter(table_id__in=stale).values_list(
            "table_id", "key", "value"
        ):
            fresh[slugs[table_id]][key] = value
        kept = {slug: rows for slug, rows in _lookup_cache["tables"].items() if slug in slugs.values()}
        kept.update(fresh)
        _lookup_cache["tables"] = kept
        _lookup_cache["versions"] = versions
        _lookup_cache["reasons"] = {slug: reason for _, slug, _, reason in tables}
    return _lookup_cache["tables"], _lookup_cache["reasons"]


@functools.lru_cache(maxsize=256)
def _validator_for(schema_json: str):
    schema = json.loads(schema_json)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def validator_for(schema: dict):
    return _validator_for(json.dumps(schema, sort_keys=True))


def payload_hash(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
