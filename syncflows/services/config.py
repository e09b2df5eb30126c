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

from syncflows.models import BriefVersion, LookupRow, LookupTable, Route, Trigger


@dataclass
class PipelineConfig:
    triggers: list = field(default_factory=list)  # (Trigger, TriggerVersion | None)
    versions_by_trigger: dict = field(default_factory=dict)  # trigger id → [BriefVersion]
    lookups: dict = field(default_factory=dict)  # slug → {key: value}
    missing_reasons: dict = field(default_factory=dict)  # slug → reason code
    routes: list = field(default_factory=list)

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
    config.lookups, config.missing_reasons = _load_lookups()
    config.routes = list(
        Route.objects.filter(is_active=True, destination__is_active=True).select_related(
            "destination"
        )
    )
    return config


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
