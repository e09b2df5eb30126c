"""Find CRM records by any id a person has at hand, and read their whole path.

``find_record_keys`` accepts a CRM record id, an alias id left by a merge, a
full record key, an ERP document number or reference, or an idempotency key.
``build_trace`` returns a JSON-serialisable dict of the record, every ledger
entry, its commands and its exception cases, in a fixed number of queries.

Exception cases live in the ``exceptions`` app, which depends on this one, so
the case model is looked up through the app registry instead of imported.
"""

from django.apps import apps
from django.db.models import Q, QuerySet

from syncflows.models import Command, InboundEvent, LedgerEntry, RecordAlias, SourceRecord

MAX_RECORD_KEYS = 50


def matching_records(query: str) -> QuerySet:
    """Return the SourceRecords that ``query`` names, as one lazy queryset.

    Other querysets may use it as a subquery, for example
    ``record_key__in=matching_records(q).values("record_key")``."""
    query = query.strip()
    alias_records = RecordAlias.objects.filter(alias_id=query).values("record_id")
    command_records = Command.objects.filter(
        Q(erp_document_number=query) | Q(erp_reference=query) | Q(idempotency_key=query)
    ).values("record_id")
    return SourceRecord.objects.filter(
        Q(record_id=query)
        | Q(record_key=query)
        | Q(pk__in=alias_records)
        | Q(pk__in=command_records)
    )


def find_record_keys(query: str) -> list[str]:
    """Return the distinct record keys that ``query`` names, at most 50, sorted.

    A full record key also matches when only ledger entries carry it, for
    example a delivery that was rejected before a source record existed."""
    query = query.strip()
    if not query:
        return []
    keys = set(
        matching_records(query)
        .order_by("record_key")
        .values_list("record_key", flat=True)[:MAX_RECORD_KEYS]
    )
    if ":" in query and query not in keys:
        if LedgerEntry.objects.filter(record_key=query).exists():
            keys.add(query)
    return sorted(keys)[:MAX_RECORD_KEYS]


def build_trace(record_key: str) -> dict:
    """Collect the record, its ledger entries, commands and cases as plain JSON."""
    record = (
        SourceRecord.objects.select_related("connector")
        .filter(record_key=record_key)
        .first()
    )
    # The receipt of a delivery names no record, since a batch may hold
    # several; it joins the trace of each record whose events it brought.
    deliveries = InboundEvent.objects.filter(change__record__record_key=record_key).values(
        "delivery_id"
    )
    entries = LedgerEntry.objects.filter(
        Q(record_key=record_key) | Q(step=LedgerEntry.Step.RECEIVE, delivery_id__in=deliveries)
    ).order_by("id")
    commands = (
        Command.objects.filter(record__record_key=record_key)
        .select_related("destination")
        .order_by("id")
    )
    return {
        "record_key": record_key,
        "record": _record_dict(record) if record else None,
        "entries": [_entry_dict(entry) for entry in entries],
        "commands": [_command_dict(command) for command in commands],
        "cases": _case_dicts(record_key),
    }


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def _record_dict(record: SourceRecord) -> dict:
    return {
        "record_key": record.record_key,
        "connector": record.connector.slug,
        "object_type": record.object_type,
        "record_id": record.record_id,
        "state": record.state,
        "revision": record.revision,
        "is_deleted": record.is_deleted,
    }


def _entry_dict(entry: LedgerEntry) -> dict:
    return {
        "id": entry.pk,
        "step": entry.step,
        "step_label": entry.get_step_display(),
        "ok": entry.ok,
        "created_at": _iso(entry.created_at),
        "message": entry.message,
        "reason_code": entry.reason_code,
        "payload_before": entry.payload_before,
        "payload_after": entry.payload_after,
        "command_id": entry.command_id,
        "case_id": entry.case_id,
        "event_id": entry.event_id,
        "delivery_id": entry.delivery_id,
        "run_id": entry.run_id,
    }


def _command_dict(command: Command) -> dict:
    return {
        "id": command.pk,
        "state": command.state,
        "command_type": command.command_type,
        "mode": command.mode,
        "idempotency_key": command.idempotency_key,
        "payload": command.payload,
        "erp_reference": command.erp_reference,
        "erp_document_number": command.erp_document_number,
        "attempts": command.attempts,
        "last_error": command.last_error,
        "reason_code": command.reason_code,
        "created_at": _iso(command.created_at),
        "finished_at": _iso(command.finished_at),
        "destination": command.destination.slug,
    }


def _case_dicts(record_key: str) -> list[dict]:
    if not apps.is_installed("exceptions"):
        return []
    case_model = apps.get_model("exceptions", "ExceptionCase")
    cases = (
        case_model.objects.filter(record_key=record_key)
        .select_related("lane", "owner_user", "owner_group")
        .order_by("id")
    )
    return [_case_dict(case) for case in cases]


def _case_dict(case) -> dict:
    if case.owner_user is not None:
        owner = case.owner_user.get_username()
    elif case.owner_group is not None:
        owner = case.owner_group.name
    else:
        owner = None
    return {
        "id": case.pk,
        "state": case.state,
        "reason_code": case.reason_code,
        "title": case.title,
        "lane": case.lane.slug,
        "owner": owner,
    }
