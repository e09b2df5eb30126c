"""Applying a parsed CRM event to the last-known state of its record.

Each field carries the version of the change that last set it:
``[occurred_at_iso, sequence]``. An incoming field is applied only when its
change is not older than that version, so a late delivery of an old change
cannot roll a newer value back, while its other, newer fields still apply.
"""

from datetime import UTC

from django.db import connection

from meshline.db import insert_statement
from syncflows.models import RecordAlias, RecordChange, SourceRecord
from syncflows.services import ledger

Step = ledger.LedgerEntry.Step


def record_key(connector, object_type: str, record_id: str) -> str:
    return f"{connector.record_namespace}:{object_type}:{record_id}"


def _version(event) -> list:
    # A fixed-width UTC form, so that versions compare correctly as strings.
    moment = event.occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [moment, event.sequence or 0]


def resolve_record(connector, object_type: str, record_id: str, *, lock: bool = True):
    """Return the SourceRecord for a CRM id, following merge aliases; create it
    when it is new. The row is locked for the rest of the transaction.

    ``record._created`` says whether this call created the row."""
    key = record_key(connector, object_type, record_id)
    alias = RecordAlias.objects.filter(alias_key=key).values_list("record_id", flat=True).first()
    queryset = SourceRecord.objects.select_for_update() if lock else SourceRecord.objects
    if alias is not None:
        record = queryset.get(pk=alias)
        record._created = False
        return record
    fresh = SourceRecord(
        connector=connector,
        object_type=object_type,
        record_id=record_id,
        record_key=key,
        business_unit=connector.business_unit,
        region=connector.region,
    )
    if connection.vendor == "postgresql":
        return _upsert(fresh)
    record, created = queryset.get_or_create(
        record_key=key,
        defaults={
            "connector": connector,
            "object_type": object_type,
            "record_id": record_id,
            "business_unit": connector.business_unit,
            "region": connector.region,
        },
    )
    record._created = created
    return record


def _upsert(fresh):
    """Insert the record, or lock and return the stored one, in one statement.

    ``ON CONFLICT DO UPDATE`` locks the existing row as ``SELECT ... FOR
    UPDATE`` would; the no-op update leaves its values alone."""
    meta = SourceRecord._meta
    insert_sql, values = insert_statement([fresh], connection.alias)
    quote = connection.ops.quote_name
    columns = [field.column for field in meta.concrete_fields]
    with connection.cursor() as cursor:
        cursor.execute(
            f"{insert_sql} "
            "ON CONFLICT (record_key) DO UPDATE SET record_key = EXCLUDED.record_key "
            f"RETURNING {', '.join(quote(column) for column in columns)}, (xmax = 0)",
            values,
        )
        *row, created = cursor.fetchone()
    converters = connection.ops.get_db_converters
    decoded = []
    for field, value in zip(meta.concrete_fields, row):
        expression = field.get_col(meta.db_table)
        for converter in [*converters(expression), *field.get_db_converters(connection)]:
            value = converter(value, expression, connection)
        decoded.append(value)
    record = SourceRecord.from_db(connection.alias, [field.attname for field in meta.concrete_fields], decoded)
    if record.connector_id == fresh.connector_id:
        record.connector = fresh.connector
    record._created = created
    return record


def apply_event(event, parsed, rows=None) -> RecordChange:
    """Merge one InboundEvent into its record and store the RecordChange.

    With ``rows``, the ledger row is appended there for the caller to insert
    with the others; without it, the row is written at once."""
    connector = event.connector
    record = resolve_record(connector, event.object_type, event.record_id)
    previous = dict(record.state)
    version = _version(event)
    state = dict(record.state)
    versions = dict(record.field_versions)
    applied, skipped, changed = [], [], []

    for field, value in parsed.fields.items():
        stored = versions.get(field)
        if stored is not None and list(stored) > version:
            skipped.append(field)
            continue
        applied.append(field)
        versions[field] = version
        if state.get(field, _ABSENT) != value:
            changed.append(field)
        state[field] = value

    structural = parsed.change_type in {"create", "delete", "merge"}
    is_stale = bool(skipped) and not applied and not structural
    # A deletion under a merged-away id is the CRM removing the loser of a
    # merge; the surviving record is not deleted.
    via_alias = record.record_id != event.record_id
    if parsed.change_type == "delete" and not record.is_deleted and not via_alias:
        record.is_deleted = True
        changed.append("is_deleted")

    if not is_stale:
        record.state = state
        record.field_versions = versions
        record.revision += 1
        if record.last_occurred_at is None or event.occurred_at > record.last_occurred_at:
            record.last_occurred_at = event.occurred_at
        _link_parent(record, parsed)
        record.save()
        if parsed.change_type == "merge":
            _record_merge(record, parsed)
        if record._created:
            _adopt_children(record)

    change = RecordChange.objects.create(
        record=record,
        event=event,
        change_type=parsed.change_type,
        revision=record.revision,
        occurred_at=event.occurred_at,
        state=record.state,
        previous=previous,
        changed=changed,
        status=RecordChange.Status.STALE if is_stale else RecordChange.Status.APPLIED,
    )
    if is_stale:
        row = ledger.build(
            Step.STALE,
            f"Change from {event.occurred_at.isoformat()} is older than the stored "
            f"values of {', '.join(skipped)}; the newer state was kept.",
            ok=True,
            reason_code="stale_event",
            record_key=record.record_key,
            connector=connector,
            delivery_id=event.delivery_id,
            event=event,
            payload_before=previous,
            payload_after=parsed.fields,
        )
    else:
        note = f" Kept newer values of {', '.join(skipped)}." if skipped else ""
        row = ledger.build(
            Step.NORMALISE,
            f"{parsed.change_type.capitalize()} applied as revision {record.revision}; "
            f"changed: {', '.join(changed) or 'nothing'}.{note}",
            record_key=record.record_key,
            connector=connector,
            delivery_id=event.delivery_id,
            event=event,
            payload_before=previous,
            payload_after=record.state,
        )
    if rows is None:
        row.save()
    else:
        rows.append(row)
    return change


_ABSENT = object()


def _link_parent(record, parsed) -> None:
    if not parsed.parent_type or not parsed.parent_id:
        return
    namespace = record.record_key.split(":", 1)[0]
    record.parent_ref = f"{namespace}:{parsed.parent_type}:{parsed.parent_id}"
    record.parent = SourceRecord.objects.filter(record_key=record.parent_ref).first()


def _adopt_children(record) -> None:
    """Link child records that arrived before this parent existed."""
    SourceRecord.objects.filter(parent_ref=record.record_key, parent__isnull=True).update(
        parent=record
    )


def _record_merge(survivor, parsed) -> None:
    for merged_id in parsed.merged_ids:
        if merged_id == survivor.record_id:
            continue
        namespace = survivor.record_key.split(":", 1)[0]
        alias_key = f"{namespace}:{survivor.object_type}:{merged_id}"
        RecordAlias.objects.get_or_create(
            alias_key=alias_key, defaults={"record": survivor, "alias_id": merged_id}
        )
        SourceRecord.objects.filter(record_key=alias_key).update(merged_into=survivor)
