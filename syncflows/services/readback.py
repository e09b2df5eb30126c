"""Reading a record and its associations back from the CRM before mapping.

A webhook rarely carries the whole order, so a brief version may name in
``read_back`` the properties and associations to read from the CRM's API.
The values read are applied like a normalised change: each field gets the
read time as its version, so a webhook that occurred after the read still
wins, and an older late webhook cannot roll the read values back.

Transactions: the pipeline calls ``read_back`` inside the transaction that
locks the source record, so the HTTP calls run while that row lock is held.
Other changes of the same record wait; changes of other records do not. The
wait is bounded by the connector's timeout, attempts and maximum wait per
retry. The pacer's sleeps before each call also run under that row lock,
each at most the maximum wait, but the pacer takes its own slot outside the
transaction (``syncflows.crm.pacing``), so it never waits for another
record's lock. In exchange, the values read, the children and the run commit
together, and two changes of one record never read and write concurrently.

Transient failures: a 429 or an outage is first retried inside the read,
page by page. When that budget runs out, the run fails with
``rate_limited`` or ``crm_unavailable`` and ``error_detail.retry_at``, and
``retry_deferred_reads`` (scheduled every minute) runs it again when due, up
to MAX_DEFERRALS times. The change and the record state are never lost.
"""

import contextvars
import logging
from datetime import UTC, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from meshline.expressions import to_cel_value
from syncflows.crm import CrmError, ReadRequest, RecordNotFound, get_client
from syncflows.models import (
    Command,
    ConnectorApiAccess,
    ConnectorHealth,
    LedgerEntry,
    RecordChange,
    SourceRecord,
    SyncRun,
)
from syncflows.models.crm import RECENT_ERRORS_KEPT
from syncflows.services import ledger

logger = logging.getLogger(__name__)
Step = LedgerEntry.Step

TRANSIENT_REASONS = ("rate_limited", "crm_unavailable")
MAX_DEFERRALS = 5
# Wait before the first deferred retry; each later one waits twice as long.
FIRST_DEFERRAL_SECONDS = 60

# The deferral number of the run being retried, so the next failure counts on.
_deferral = contextvars.ContextVar("readback_deferral", default=0)


def read_back(record, version, evaluator, rows) -> None:
    """Fetch what ``version.read_back`` requests, update the record and its
    children, and set ``record`` and ``children`` in the evaluator.

    Raises pipeline.RunFailed when the read fails or the record was deleted.
    """
    event = dict(evaluator.evaluate("event", name="read-back event"))
    change = _change_of(record, event)
    access = _api_access(record)
    request = ReadRequest.from_json(version.read_back)
    client = _client(access, record)
    try:
        result = _read(client, record, change, request, rows)
    except CrmError as exc:
        _note_health(access, client, error=exc)
        raise _run_failed(exc, record, access) from None
    finally:
        client.close()
    _note_health(access, client)
    if result is not None:
        apply_read(record, result, change, rows, crm=access.get_crm_display())
    _set_variables(record, evaluator)


def _read(client, record, change, request, rows):
    """Return the ReadResult to apply, or None when the record must not change."""
    is_delete = change is not None and change.change_type == "delete"
    if is_delete and change.event.record_id != record.record_id:
        _ignore_merged_deletion(record, change, rows)
        return None
    try:
        result = client.read(record.object_type, record.record_id, request)
    except RecordNotFound as exc:
        raise _deleted(record, change, exc) from None
    if result.record_id != record.record_id:
        # The CRM returned another record: this one was merged into it.
        _note_merged_away(record, change, result.record_id, rows)
        return None
    if is_delete and record.is_deleted:
        # The CRM still has the record, so the deletion was undone since.
        record.is_deleted = False
    return result


def _change_of(record, event: dict) -> RecordChange | None:
    return (
        RecordChange.objects.select_related("event")
        .filter(
            record=record, revision=event["revision"], change_type=event["change_type"]
        )
        .exclude(status=RecordChange.Status.STALE)
        .order_by("-id")
        .first()
    )


def _api_access(record) -> ConnectorApiAccess:
    from syncflows.services.pipeline import RunFailed

    access = ConnectorApiAccess.objects.filter(
        connector=record.connector, is_active=True
    ).first()
    if access is None:
        raise RunFailed(
            "crm_unavailable",
            f"Connector {record.connector.slug} has no active CRM API access, so "
            f"{record.record_key} cannot be read back. Add the API access in admin, "
            "then retry.",
            {"read_back": True, "connector": record.connector.slug},
        )
    return access


def _client(access, record):
    from syncflows.services.pipeline import RunFailed

    try:
        return get_client(access)
    except CrmError as exc:
        _note_health(access, None, error=exc)
        raise RunFailed(exc.reason_code, exc.message, {"read_back": True}) from None


def _set_variables(record, evaluator) -> None:
    from syncflows.services.pipeline import load_children

    evaluator.set_variable("record", to_cel_value(record.state))
    evaluator.set_variable("children", load_children(record))


# Applying what was read


def read_version(moment) -> list:
    """The field version of a value read at ``moment``, in the fixed-width UTC
    form that normalise uses, so that versions compare correctly as strings."""
    return [moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), 0]


def merge_fields(
    state: dict, versions: dict, fields: dict, version: list
) -> tuple[list, list]:
    """Apply ``fields`` where the stored version is not newer; return
    (applied, skipped) field names. Changes ``state`` and ``versions`` in place."""
    applied, skipped = [], []
    for name, value in fields.items():
        stored = versions.get(name)
        if stored is not None and list(stored) > version:
            skipped.append(name)
            continue
        state[name] = value
        versions[name] = version
        applied.append(name)
    return applied, skipped


def apply_read(record, result, change, rows, *, crm: str, read_at=None) -> None:
    """Write the read values into the record and its children, with a ledger row."""
    read_at = read_at or timezone.now()
    version = read_version(read_at)
    before = dict(record.state)
    state, versions = dict(record.state), dict(record.field_versions)
    applied, skipped = merge_fields(
        state, versions, {**result.fields, **result.related}, version
    )
    record.state, record.field_versions = state, versions
    record.save(update_fields=["state", "field_versions", "is_deleted", "updated_at"])
    counts = sync_children(record, result, version, read_at)

    note = f" Kept newer webhook values of {', '.join(skipped)}." if skipped else ""
    children = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    rows.append(
        ledger.build(
            Step.NORMALISE,
            f"Read back from {crm}: {len(applied)} field(s) applied"
            f"{'; children: ' + children if children else ''}.{note}",
            record_key=record.record_key,
            event_id=change.event_id if change else None,
            payload_before=before,
            payload_after=record.state,
        )
    )


def sync_children(record, result, version: list, read_at) -> dict:
    """Create or update the child records read; mark removed ones deleted.

    Returns the number of children read per object type.
    """
    namespace = record.record_key.split(":", 1)[0]
    by_key = {
        f"{namespace}:{child.object_type}:{child.record_id}": child
        for child in result.children
    }
    existing = {
        row.record_key: row
        for row in SourceRecord.objects.select_for_update().filter(
            record_key__in=list(by_key)
        )
    }
    created, updated = [], []
    for key, child in by_key.items():
        row = existing.get(key)
        if row is None:
            created.append(_new_child(record, key, child, version))
            continue
        state, versions = dict(row.state), dict(row.field_versions)
        merge_fields(state, versions, child.fields, version)
        row.state, row.field_versions = state, versions
        row.parent, row.parent_ref, row.is_deleted = record, record.record_key, False
        updated.append(row)
    SourceRecord.objects.bulk_create(created)
    SourceRecord.objects.bulk_update(
        updated, ["state", "field_versions", "parent", "parent_ref", "is_deleted"]
    )
    _mark_removed(record, result.complete_child_types, set(by_key), read_at)
    counts: dict[str, int] = {}
    for child in result.children:
        counts[child.object_type] = counts.get(child.object_type, 0) + 1
    return counts


def _new_child(record, key, child, version) -> SourceRecord:
    return SourceRecord(
        connector=record.connector,
        object_type=child.object_type,
        record_id=child.record_id,
        record_key=key,
        state=dict(child.fields),
        field_versions={name: version for name in child.fields},
        parent=record,
        parent_ref=record.record_key,
        business_unit=record.business_unit,
        region=record.region,
    )


def _mark_removed(record, object_types, seen: set, read_at) -> None:
    """Mark deleted the stored children that the CRM no longer lists, unless a
    webhook about them occurred after the read."""
    removed = SourceRecord.objects.filter(
        parent=record, object_type__in=list(object_types), is_deleted=False
    ).exclude(record_key__in=seen)
    removed.exclude(last_occurred_at__gt=read_at).update(is_deleted=True)


# Deletions and merges


def _ignore_merged_deletion(record, change, rows) -> None:
    """Ignore a deletion of a merged-away id, because the survivor's order is valid."""
    deleted_id = change.event.record_id
    record.is_deleted = False
    record.save(update_fields=["is_deleted", "updated_at"])
    rows.append(
        ledger.build(
            Step.NORMALISE,
            f"Deletion of {record.object_type} {deleted_id} ignored: it was merged "
            f"into {record.record_id}, whose order stands.",
            record_key=record.record_key,
            event_id=change.event_id,
        )
    )
    logger.info("Ignored deletion of merged-away %s %s", record.record_key, deleted_id)


def _note_merged_away(record, change, survivor_id: str, rows) -> None:
    # NOTE: the record is not re-pointed at the survivor here; the CRM's
    # merge event does that. Until it arrives, the stored state is kept.
    if record.is_deleted:
        record.is_deleted = False
        record.save(update_fields=["is_deleted", "updated_at"])
    rows.append(
        ledger.build(
            Step.NORMALISE,
            f"Read back of {record.record_key} returned {record.object_type} "
            f"{survivor_id}: the CRM merged it, so its values were not applied "
            "and its order stands.",
            record_key=record.record_key,
            event_id=change.event_id if change else None,
        )
    )


def _deleted(record, change, error):
    """Build the RunFailed for a record the CRM no longer has, for Finance to decide."""
    from syncflows.services.pipeline import RunFailed

    commands = list(
        Command.objects.filter(record=record)
        .exclude(state=Command.State.SUPERSEDED)
        .values("pk", "state", "erp_document_number")
    )
    synced = [c for c in commands if c["state"] == Command.State.SUCCEEDED]
    if synced:
        documents = ", ".join(
            c["erp_document_number"] or f"command {c['pk']}" for c in synced
        )
        message = (
            f"{record.record_key} was deleted in the CRM after it was synced to "
            f"the ERP ({documents}). Nothing was cancelled: compensate the order "
            "or dismiss the case."
        )
    else:
        message = (
            f"{record.record_key} was deleted in the CRM before its order reached "
            "the ERP. No order was sent. Dismiss the case, or replay the deal if "
            "the deletion was a mistake."
        )
    return RunFailed(
        "record_deleted",
        message,
        {
            "read_back": True,
            "crm_message": error.message,
            "commands": [c["pk"] for c in commands],
            "synced_commands": [c["pk"] for c in synced],
            "change_type": change.change_type if change else "",
        },
    )


def _run_failed(exc: CrmError, record, access):
    from syncflows.services.pipeline import RunFailed

    detail = {
        "read_back": True,
        "connector": record.connector.slug,
        "status": exc.status,
        "crm_code": exc.crm_code,
        "transient": exc.transient,
    }
    message = exc.message
    if exc.transient:
        deferral = _deferral.get() + 1
        detail["deferral"] = deferral
        if deferral <= MAX_DEFERRALS:
            delay = max(
                exc.retry_after or 0, FIRST_DEFERRAL_SECONDS * 2 ** (deferral - 1)
            )
            retry_at = timezone.now() + timedelta(seconds=delay)
            detail["retry_at"] = retry_at.isoformat()
            message += (
                f" Meshline reads {record.record_key} again after "
                f"{retry_at:%H:%M:%S} UTC."
            )
        else:
            message += (
                f" Meshline gave up after {MAX_DEFERRALS} deferred reads: "
                "retry the case."
            )
    elif exc.reason_code == "auth_failed":
        message += (
            f" The CRM connector {record.connector.slug} needs new credentials "
            "in admin. Its health page shows the errors."
        )
    return RunFailed(exc.reason_code, message, detail)


# Connector health


def _note_health(access, client, *, error: CrmError | None = None) -> None:
    """Record the outcome of one read on the connector's health row, after commit."""
    stats = dict(client.stats) if client is not None else {"errors": [], "requests": 0}
    auth = getattr(getattr(client, "transport", None), "auth", None)
    # Proactive refreshes of an expiring token happen outside the transport's count.
    stats["refreshes"] = getattr(auth, "refreshes", stats.get("refreshes", 0))
    now = timezone.now()
    token_expires_at = getattr(auth, "expires_at", None)
    transaction.on_commit(
        lambda: save_health(access.connector_id, stats, now, error, token_expires_at)
    )


def save_health(connector_id, stats: dict, now, error, token_expires_at=None) -> None:
    health = _health_row(connector_id)
    health.last_read_at = now
    if error is None:
        health.last_read_ok_at = now
        health.auth_failed_at = None
    else:
        health.last_error_at = now
    if error is not None and error.reason_code == "auth_failed":
        health.auth_failed_at = now
    health.rate_limit_hits += stats.get("rate_limited", 0)
    health.token_refreshes += stats.get("refreshes", 0)
    if stats.get("remaining") is not None:
        health.rate_limit_remaining = stats["remaining"]
    if stats.get("retry_after"):
        health.rate_limited_until = now + timedelta(seconds=stats["retry_after"])
    errors = [
        {**item, "at": now.isoformat()} for item in reversed(stats.get("errors", []))
    ]
    health.recent_errors = (errors + list(health.recent_errors or []))[
        :RECENT_ERRORS_KEPT
    ]
    health.save()
    if token_expires_at is not None:
        ConnectorApiAccess.objects.filter(connector_id=connector_id).update(
            token_expires_at=token_expires_at
        )


def _health_row(connector_id) -> ConnectorHealth:
    try:
        with transaction.atomic():
            return ConnectorHealth.objects.get_or_create(connector_id=connector_id)[0]
    except IntegrityError:
        # Another worker created the row at the same moment.
        return ConnectorHealth.objects.get(connector_id=connector_id)


# Deferred reads


def retry_deferred_reads(now=None) -> int:
    """Run again the runs whose read-back failed transiently and is now due.

    Skips a run when a later run of the same brief and record has succeeded
    since. Returns the number of runs retried.
    """
    from syncflows.services.dispatch import dispatch_due
    from syncflows.services.pipeline import RunFailed, rerun

    now = now or timezone.now()
    retried, queued = 0, False
    for run in _due_runs(now):
        if _superseded_by_later_run(run):
            with transaction.atomic():
                SyncRun.objects.filter(pk=run.pk).update(state=SyncRun.State.SUPERSEDED)
                # The ledger row lets the dashboard's summary see the change.
                ledger.write(
                    Step.SUPERSEDE,
                    f"Deferred read-back of run {run.pk} dropped: a later run of the "
                    "same brief and record has succeeded.",
                    record_key=run.record.record_key,
                    run=run,
                )
            continue
        token = _deferral.set(run.error_detail.get("deferral", 0))
        try:
            command = rerun(run.pk)
        except RunFailed as exc:
            logger.warning(
                "Deferred read-back of run %s failed: %s", run.pk, exc.message
            )
            continue
        finally:
            _deferral.reset(token)
        retried += 1
        queued = queued or command is not None
    if queued:
        dispatch_due()
    return retried


def _due_runs(now) -> list:
    runs = SyncRun.objects.filter(
        state=SyncRun.State.FAILED,
        reason_code__in=TRANSIENT_REASONS,
        error_detail__read_back=True,
        error_detail__has_key="retry_at",
    ).order_by("id")
    return [run for run in runs if run.error_detail["retry_at"] <= now.isoformat()]


def _superseded_by_later_run(run) -> bool:
    return SyncRun.objects.filter(
        record_id=run.record_id,
        brief_version__brief_id=run.brief_version.brief_id,
        pk__gt=run.pk,
        state__in=[SyncRun.State.QUEUED, SyncRun.State.UNCHANGED],
    ).exists()
