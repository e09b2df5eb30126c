"""Match, transform, validate and route: from a record change to an outbox command.

Changes are processed in batches. A batch's transaction locks the source
records of its changes, so changes of one record are processed one at a time. The mapping reads the
record's current state, not the change's snapshot: when two changes of one
record are processed out of order, both map to the same command.
"""

import logging

from django.db import transaction
from django.utils import timezone

from meshline import money
from meshline.logging import log_context
from meshline.expressions import Evaluator, ExpressionError, LookupMissing, to_cel_value
from syncflows.adapters.base import REASONS
from syncflows.models import Command, InboundEvent, LedgerEntry, RecordChange, SourceRecord, SyncRun
from syncflows.services import ledger
from syncflows.services.batch import ChangeBatch, NeedsOwnTransaction
from syncflows.services.config import load_config, validator_for
from syncflows.services.failures import Failure, report_failure, report_resolution
from syncflows.services.outbox import enqueue_command

logger = logging.getLogger(__name__)
Step = LedgerEntry.Step


class RunFailed(Exception):
    def __init__(self, reason_code: str, message: str, detail: dict | None = None):
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message
        self.detail = detail or {}


BATCH_SIZE = 100


def process_changes(change_ids, config=None, *, fill: bool = False) -> list[int]:
    """Process changes in batches; return the queued command ids.

    With ``fill``, a batch that has room also takes other changes waiting to
    be processed, so a backlog of one-change tasks is worked off in batches
    and the tasks that come later find their change done.

    Each batch is one transaction. Its changes are planned in Python and
    written with one statement per table (see batch.py). A change that needs
    more runs on its own in a savepoint, so a change that fails rolls back
    alone and stays ``applied`` for the sweep.
    """
    command_ids = []
    ids = list(change_ids)
    starts = range(0, len(ids), BATCH_SIZE) if ids else [0]
    for start in starts:
        chunk = ids[start : start + BATCH_SIZE]
        waiting = RecordChange.objects.filter(status=RecordChange.Status.APPLIED)
        if not (waiting if fill else waiting.filter(pk__in=chunk)).exists():
            # Nothing to do, found with one query and no transaction: the
            # usual case for the later tasks of a backlog.
            continue
        claimed = []
        try:
            with transaction.atomic():
                changes = _claim_changes(chunk, fill)
                if not changes:
                    continue
                claimed = [change.pk for change in changes]
                # Read once there is work: most tasks of a backlog find their
                # change already done.
                config = config or load_config()
                command_ids.extend(_process_batch(changes, config))
        except Exception:
            # The batch rolled back as a whole; each change gets its own try.
            logger.exception("A batch of %s record change(s) failed; processing them one by one", len(claimed))
            command_ids.extend(_process_one_by_one(claimed, config or load_config()))
    return command_ids


def _process_one_by_one(change_ids, config) -> list[int]:
    command_ids = []
    for change_id in change_ids:
        try:
            command_ids.extend(process_change(change_id, config))
        except Exception:
            # One broken change must not stop the others.
            logger.exception("Processing record change %s failed", change_id)
    return command_ids


def _claim_changes(ids, fill: bool) -> list:
    """Lock the changes still to be processed; skip those another worker holds."""
    claimable = (
        RecordChange.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("event")
        .filter(status=RecordChange.Status.APPLIED)
    )
    changes = list(claimable.filter(pk__in=ids)) if ids else []
    room = BATCH_SIZE - len(changes)
    if fill and room > 0:
        # The sweep index serves this: applied changes, oldest first.
        others = claimable.exclude(pk__in=ids).order_by("created_at", "id")[:room]
        changes.extend(others)
    return sorted(changes, key=lambda change: change.pk)


def _process_batch(changes, config) -> list[int]:
    if not changes:
        return []
    # Lock the records in id order, so that two batches cannot deadlock on
    # each other.
    records = {
        record.pk: record
        for record in SourceRecord.objects.select_for_update(of=("self",))
        .select_related("connector")
        .filter(pk__in={change.record_id for change in changes})
        .order_by("pk")
    }
    batch = ChangeBatch(_live_commands(records))
    command_ids = []
    for change in changes:
        record = records[change.record_id]
        if batch.holds_record(record.pk):
            # Flush first, so a second change of a record reads the first one's rows.
            command_ids.extend(batch.flush())
        if not record.parent_id:
            batch.begin_change(change)
            try:
                with log_context(event_id=change.event_id, delivery_id=change.event.delivery_id):
                    _match_and_run(change, record, config, batch)
            except Exception:
                # NeedsOwnTransaction, or an error that processing the change
                # on its own reports below.
                batch.discard_change()
            else:
                batch.end_change(change.status)
                continue
        command_ids.extend(batch.flush())
        try:
            command_ids.extend(process_change(change.pk, config))
        except Exception:
            # One broken change must not stop the batch.
            logger.exception("Processing record change %s failed", change.pk)
        # The change may have written the record and its commands; later
        # changes of the record in this batch must see that.
        record.refresh_from_db()
        batch.forget_record(record.pk)
        batch.live_commands.update(_live_commands({record.pk: record}))
    command_ids.extend(batch.flush())
    return command_ids


def _live_commands(records) -> dict:
    """Return the records' commands that still hold their idempotency key."""
    live = Command.objects.filter(record_id__in=list(records)).exclude(
        state=Command.State.SUPERSEDED
    )
    return {command.idempotency_key: command for command in live}


def process_change(change_id: int, config) -> list[int]:
    """Process one change with its own writes, for what a batch cannot plan."""
    change = RecordChange.objects.select_related("event").get(pk=change_id)
    with log_context(event_id=change.event_id, delivery_id=change.event.delivery_id):
        return _process_one(change, config)


def _process_one(change, config) -> list[int]:
    change_id = change.pk
    with transaction.atomic():
        record = SourceRecord.objects.select_for_update(of=("self",)).select_related("connector").get(
            pk=change.record_id
        )
        # Read the status again under the record's lock: another worker may
        # have processed this change while this one waited for the lock.
        change.status = RecordChange.objects.values_list("status", flat=True).get(pk=change_id)
        if change.status != RecordChange.Status.APPLIED:
            return []  # already processed, for example by a duplicate task message
        command_ids = _match_and_run(change, record, config)
        now = timezone.now()
        change.processed_at = now
        change.save(update_fields=["status", "processed_at"])
        InboundEvent.objects.filter(pk=change.event_id).update(
            status=InboundEvent.Status.PROCESSED, processed_at=now
        )
        if record.parent_id:
            command_ids.extend(_rerun_waiting(record.parent_id, config))
    return command_ids


def _event_variables(change, record) -> dict:
    event = change.event
    return {
        "type": event.event_type,
        "change_type": change.change_type,
        "connector": record.connector.slug,
        "object_type": record.object_type,
        "record_id": record.record_id,
        "record_key": record.record_key,
        "occurred_at": change.occurred_at.isoformat(),
        "revision": change.revision,
    }


def _match_and_run(change, record, config, batch=None) -> list[int]:
    """Match the change's triggers and run their briefs. With ``batch``, the
    rows go to the batch, and what it cannot hold raises NeedsOwnTransaction."""
    write_rows = batch.add_rows if batch is not None else LedgerEntry.objects.bulk_create
    event_vars = _event_variables(change, record)
    evaluator = Evaluator(
        {
            "record": to_cel_value(change.state),
            "previous": to_cel_value(change.previous),
            "changed": list(change.changed),
            "event": event_vars,
        }
    )
    matched, unmatched_rows = [], []
    namespace = record.record_key.split(":", 1)[0]
    for trigger in config.triggers_for(namespace, record.object_type):
        try:
            if evaluator.evaluate(trigger.condition, name=f"trigger {trigger.slug}") is True:
                matched.append(trigger)
        except ExpressionError as exc:
            # A trigger that cannot be evaluated on this record does not match;
            # the ledger keeps the reason so that the trigger can be fixed.
            unmatched_rows.append(
                ledger.build(
                    Step.NO_MATCH,
                    f"Trigger {trigger.slug} could not be evaluated: {exc.message}",
                    ok=False,
                    record_key=record.record_key,
                    event_id=change.event_id,
                )
            )
    if not matched:
        change.status = RecordChange.Status.UNMATCHED
        unmatched_rows.append(
            ledger.build(
                Step.NO_MATCH,
                f"No trigger matched revision {change.revision}.",
                record_key=record.record_key,
                event_id=change.event_id,
            )
        )
        write_rows(unmatched_rows)
        return []
    if unmatched_rows:
        write_rows(unmatched_rows)
    if batch is not None and any(config.shadows_by_trigger.get(trigger.pk) for trigger in matched):
        raise NeedsOwnTransaction("a shadow version runs on this change")

    change.status = RecordChange.Status.MATCHED
    command_ids = []
    for trigger in matched:
        matched_row = ledger.build(
            Step.MATCH,
            f"Trigger {trigger.slug} matched revision {change.revision}.",
            record_key=record.record_key,
            event_id=change.event_id,
        )
        business_unit = record.business_unit or record.connector.business_unit
        versions = config.versions_for(trigger.pk, business_unit)
        if not versions:
            write_rows([matched_row])
        for index, version in enumerate(versions):
            first_rows = [matched_row] if index == 0 else None
            command = run_brief(
                version, change, record, config, trigger=trigger, first_rows=first_rows, batch=batch
            )
            if command is not None:
                command_ids.append(command.pk)
        if batch is None:
            _run_shadows(trigger, change, record, config, business_unit)
    return command_ids


def _run_shadows(trigger, change, record, config, business_unit) -> None:
    """Map the change with every shadow version too; their commands are only stored."""
    shadows = config.shadows_by_trigger.get(trigger.pk)
    if not shadows:
        return
    from syncflows.services.shadow import record_shadow

    for version in shadows:
        live = config.live_version(version.brief_id, business_unit)
        record_shadow(version, change, record, config, live)


def _rerun_waiting(parent_id: int, config) -> list[int]:
    """Run again the briefs that were waiting on a parent for more children."""
    parent = SourceRecord.objects.select_for_update(of=("self",)).select_related("connector").get(pk=parent_id)
    waiting = (
        SyncRun.objects.filter(record=parent, state=SyncRun.State.WAITING)
        .select_related("change__event", "brief_version__brief")
        .order_by("-id")
    )
    done, command_ids = set(), []
    for run in waiting:
        if run.brief_version_id in done:
            continue
        done.add(run.brief_version_id)
        SyncRun.objects.filter(pk=run.pk).update(state=SyncRun.State.SUPERSEDED)
        command = run_brief(run.brief_version, run.change, parent, config)
        if command is not None:
            command_ids.append(command.pk)
    return command_ids


def mapping_variables(record, change, children=None) -> dict:
    connector = record.connector
    return {
        "record": to_cel_value(record.state),
        "children": children if children is not None else load_children(record),
        "event": _event_variables(change, record),
        "connector": {
            "slug": connector.slug,
            "kind": connector.kind,
            "default_currency": connector.default_currency,
            "business_unit": record.business_unit or connector.business_unit,
            "region": record.region or connector.region,
            "time_zone": connector.time_zone,
        },
    }


def _uses_children(version) -> bool:
    sources = [*map(str, version.mapping.values()), version.ready_condition or ""]
    sources += [str(check.get("expression", "")) for check in version.acceptance or []]
    return any("children" in source for source in sources) or bool(version.read_back)


def load_children(record) -> dict:
    children: dict[str, list] = {}
    rows = SourceRecord.objects.filter(parent=record, is_deleted=False).order_by("record_id")
    for object_type, record_id, state in rows.values_list("object_type", "record_id", "state"):
        children.setdefault(object_type, []).append({"id": record_id, **to_cel_value(state)})
    return children


def run_brief(version, change, record, config, *, trigger=None, first_rows=None, batch=None):
    """Apply one brief version to one change; return the queued Command or None.

    ``first_rows`` are ledger rows to write before this run's own, in the same
    bulk insert. With ``batch``, the run and its rows go to the batch, and the
    command it returns is saved when the batch is flushed."""
    if batch is not None and version.read_back:
        raise NeedsOwnTransaction("the brief reads the record back from the CRM")
    rows: list[LedgerEntry] = []
    run = SyncRun(
        brief_version=version,
        change=change,
        record=record,
        trigger_version=trigger.current_version if trigger else None,
    )
    children = load_children(record) if _uses_children(version) else {}
    evaluator = Evaluator(
        mapping_variables(record, change, children), config.lookups, config.missing_reasons
    )
    command = None
    try:
        if version.read_back:
            # Before the ready condition, which may wait for children that
            # only the read-back brings.
            from syncflows.services.readback import read_back

            read_back(record, version, evaluator, rows)
        if version.ready_condition and not _is_ready(evaluator, version):
            run.state = SyncRun.State.WAITING
            rows.append(
                _row(Step.WAIT, f"Brief {version} is waiting: its ready condition is false.", record, change)
            )
        else:
            payload = transform(evaluator, version)
            rows.append(_row(Step.TRANSFORM, f"Mapped by {version}.", record, change, after=payload))
            validate(evaluator, version, payload)
            rows.append(_row(Step.VALIDATE, "Schema and acceptance checks passed.", record, change))
            route = config.route_for(
                record.business_unit or record.connector.business_unit,
                record.region or record.connector.region,
                record.object_type,
            )
            if route is None:
                raise RunFailed(
                    "mapping_missing",
                    f"No routing-table row matches business unit "
                    f"{record.business_unit or '(none)'!r}, region {record.region or '(none)'!r} "
                    f"and object type {record.object_type!r}. Add a route in admin, then retry.",
                    {"table": "routing"},
                )
            rows.append(
                _row(Step.ROUTE, f"Routed to {route.destination.slug} ({route.mode}).", record, change)
            )
            run.payload = payload
            command = enqueue_command(run, version, record, payload, route, rows, batch=batch)
    except RunFailed as exc:
        if batch is not None:
            raise NeedsOwnTransaction("the run failed and opens a case") from exc
        run.state = SyncRun.State.FAILED
        run.reason_code, run.error, run.error_detail = exc.reason_code, exc.message, exc.detail
    if batch is not None:
        for row in rows:
            row.run = run
            row.command = row.command or command
        batch.add_run(run, [*(first_rows or []), *rows])
        if run.state in (SyncRun.State.QUEUED, SyncRun.State.UNCHANGED):
            batch.add_resolution(record.record_key, version.brief_id, run)
        return command
    run.save()
    for row in rows:
        row.run = run
        row.command = row.command or command
    LedgerEntry.objects.bulk_create([*(first_rows or []), *rows])
    if run.state == SyncRun.State.FAILED and run.error_detail.get("retry_at"):
        # A transient failure with a retry scheduled (a CRM read-back that hit a
        # rate limit or an outage): no case yet, only the last attempt opens one.
        ledger.write(
            Step.RETRY,
            run.error,
            ok=False,
            reason_code=run.reason_code,
            record_key=record.record_key,
            event_id=change.event_id,
            run=run,
        )
    elif run.state == SyncRun.State.FAILED:
        _report_run_failure(run, version, record, change)
    elif run.state in (SyncRun.State.QUEUED, SyncRun.State.UNCHANGED):
        report_resolution(record.record_key, version.brief_id, run)
    return command


def _row(step, message, record, change, *, ok=True, after=None, reason_code="") -> LedgerEntry:
    return ledger.build(
        step,
        message,
        ok=ok,
        record_key=record.record_key,
        event_id=change.event_id,
        payload_after=after,
        reason_code=reason_code,
    )


def _is_ready(evaluator, version) -> bool:
    try:
        return evaluator.evaluate(version.ready_condition, name="ready condition") is True
    except ExpressionError as exc:
        raise RunFailed("schema_invalid", exc.message, {"expression": exc.expression}) from None


def transform(evaluator, version) -> dict:
    payload = {}
    for name, expression in version.mapping.items():
        try:
            payload[name] = evaluator.evaluate(expression, name=name)
        except LookupMissing as exc:
            raise RunFailed(
                exc.reason_code,
                f"{exc.message} The field {name!r} of {version} needs it. "
                f"Add the row to the lookup table {exc.table!r}, then retry.",
                {"table": exc.table, "key": exc.key, "field": name},
            ) from None
        except ExpressionError as exc:
            raise RunFailed(
                "schema_invalid", exc.message, {"field": name, "expression": exc.expression}
            ) from None
    evaluator.set_variable("command", payload)
    if isinstance(payload.get("lines"), list) and payload.get("currency"):
        _compute_totals(payload)
        evaluator.set_variable("command", payload)
    return payload


def _compute_totals(payload: dict) -> None:
    """Set each line's total and the order total, rounding once per line."""
    currency = payload["currency"]
    total = None
    try:
        for index, line in enumerate(payload["lines"]):
            if not isinstance(line, dict):
                raise money.MoneyError(f"line {index + 1} is not an object")
            amount = money.line_total(
                line.get("quantity"),
                line.get("unit_price"),
                currency,
                line.get("discount_percent"),
                line.get("discount_amount"),
            )
            line["line_total"] = str(amount)
            total = amount if total is None else total + amount
    except money.MoneyError as exc:
        raise RunFailed(
            "schema_invalid",
            f"An order line has an invalid amount: {exc} Correct the CRM line or the mapping.",
            {"field": "lines"},
        ) from None
    payload["total"] = str(money.quantize(total, currency)) if total is not None else "0"


def validate(evaluator, version, payload) -> None:
    errors = sorted(validator_for(version.command_schema).iter_errors(payload), key=str)
    if errors:
        messages = [_schema_message(error) for error in errors[:10]]
        raise RunFailed(
            "schema_invalid",
            "The command does not match the brief's schema: " + "; ".join(messages),
            {"errors": messages},
        )
    for check in version.acceptance or []:
        name = check.get("name", "acceptance check")
        try:
            passed = evaluator.evaluate(check["expression"], name=name) is True
        except ExpressionError as exc:
            raise RunFailed("acceptance_failed", exc.message, {"check": name}) from None
        if passed:
            continue
        detail = {"check": name}
        for side in ("expected", "actual"):
            if check.get(side):
                try:
                    detail[side] = evaluator.evaluate(check[side], name=f"{name} ({side})")
                except ExpressionError:
                    detail[side] = None
        message = check.get("message") or f"The acceptance check {name!r} failed."
        if "expected" in detail:
            message += f" Expected {detail['expected']}, got {detail.get('actual')}."
        raise RunFailed("acceptance_failed", message, detail)


def _schema_message(error) -> str:
    location = "/".join(str(part) for part in error.absolute_path) or "the command"
    return f"{location}: {error.message}"


def _report_run_failure(run, version, record, change) -> None:
    title = REASONS.get(run.reason_code, (run.reason_code,))[0]
    ledger.write(
        Step.FAIL,
        f"{title}: {run.error}",
        ok=False,
        reason_code=run.reason_code,
        record_key=record.record_key,
        event_id=change.event_id,
        run=run,
    )
    report_failure(
        Failure(
            reason_code=run.reason_code,
            message=run.error,
            record_key=record.record_key,
            detail={**run.error_detail, "payload": run.payload},
            run=run,
            event=change.event,
            brief=version.brief,
            business_unit=record.business_unit or record.connector.business_unit,
        )
    )


def rerun(run_id: int, *, use_active_version: bool = False):
    """Run a failed run's brief again on the same change, inside a transaction.

    ``use_active_version`` replays with the brief's current active version
    and the record's latest change instead of the run's own.
    """
    config = load_config()
    with transaction.atomic():
        run = SyncRun.objects.select_related("brief_version__brief", "change").get(pk=run_id)
        return _rerun(run, config, use_active_version)


def _rerun(run, config, use_active_version: bool):
    with log_context(event_id=run.change.event_id):
        record = SourceRecord.objects.select_for_update(of=("self",)).select_related("connector").get(
            pk=run.record_id
        )
        version, change = run.brief_version, run.change
        if use_active_version:
            # The version that now runs for the record's business unit, a canary included.
            business_unit = record.business_unit or record.connector.business_unit
            version = config.live_version(version.brief_id, business_unit)
            if version is None:
                raise RunFailed("schema_invalid", f"Brief {run.brief_version.brief} has no active version.")
            change = record.changes.exclude(status=RecordChange.Status.STALE).order_by("-id").first()
        SyncRun.objects.filter(pk=run.pk, state=SyncRun.State.FAILED).update(
            state=SyncRun.State.SUPERSEDED
        )
        return run_brief(version, change, record, config)
