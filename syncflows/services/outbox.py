"""Putting commands in the outbox with their idempotency key.

The key is derived from the brief, the CRM record and the record's order
generation (raised only when the record's ERP document is compensated). So
every later change of a deal maps to the same key: the same payload returns
the stored command, and a different payload is a conflict for a person to
decide, never a second ERP document.
"""

import hashlib

from django.utils import timezone

from syncflows.models import Command, LedgerEntry, SyncRun
from syncflows.services import ledger
from syncflows.services.config import payload_hash

Step = LedgerEntry.Step

# States in which a queued command may still be replaced by a newer payload:
# it has not reached the ERP, or it failed before the ERP accepted it (a
# write after a lost answer is found by find_existing under the same key).
REPLACEABLE = (Command.State.PENDING, Command.State.RETRY_SCHEDULED, Command.State.FAILED)


def idempotency_key(brief_slug: str, record_key: str, generation: int, command_type: str) -> str:
    material = f"meshline:{brief_slug}:{record_key}:{generation}:{command_type}"
    return hashlib.sha256(material.encode()).hexdigest()


def enqueue_command(run, version, record, payload, route, rows, *, batch=None):
    """Store the command for ``run``, or explain why none is needed.

    Sets ``run.state`` and ``run.command``; raises RunFailed on a conflict.
    With ``batch``, the live commands come from the batch, and a new command
    is saved when the batch is flushed.
    """
    from syncflows.services.batch import NeedsOwnTransaction
    from syncflows.services.pipeline import RunFailed

    key = idempotency_key(
        version.brief.slug, record.record_key, record.order_generation, version.command_type
    )
    digest = payload_hash(payload)
    if batch is not None:
        existing = batch.live_commands.get(key)
        if existing is not None and existing.payload_hash != digest:
            # A conflict or a command to supersede: both need the row lock.
            raise NeedsOwnTransaction("a live command contains another payload")
    else:
        existing = (
            Command.objects.select_for_update()
            .filter(idempotency_key=key)
            .exclude(state=Command.State.SUPERSEDED)
            .first()
        )
    if existing is not None and existing.payload_hash == digest:
        run.state = SyncRun.State.UNCHANGED
        run.command = existing
        rows.append(
            _row(
                Step.UNCHANGED,
                f"Command {existing.pk} already holds this payload ({existing.get_state_display().lower()}); "
                "nothing new is sent.",
                record,
                existing,
            )
        )
        return None
    if existing is not None and existing.state not in REPLACEABLE:
        raise RunFailed(
            "idempotency_conflict",
            f"Command {existing.pk} for {record.record_key} is already "
            f"{existing.get_state_display().lower()} with a different payload. The ERP document "
            f"{existing.erp_document_number or existing.erp_reference or '(pending)'} was not changed.",
            {"existing_command": existing.pk, "existing_payload": existing.payload, "new_payload": payload},
        )
    if existing is not None:
        existing.state = Command.State.SUPERSEDED
        existing.finished_at = timezone.now()
        existing.save(update_fields=["state", "finished_at", "updated_at"])
        rows.append(
            _row(Step.SUPERSEDE, f"Command {existing.pk} superseded by a newer payload.", record, existing)
        )

    command = Command(
        idempotency_key=key,
        command_type=version.command_type,
        brief_version=version,
        record=record,
        destination=route.destination,
        mode=Command.Mode.DRY_RUN if route.mode == "dry_run" else Command.Mode.LIVE,
        payload=payload,
        payload_hash=digest,
        ordering_key=record.record_key,
        next_attempt_at=timezone.now(),
    )
    if batch is None:
        command.save()
    run.state = SyncRun.State.QUEUED
    run.command = command
    row = _row(Step.ENQUEUE, "", record, command, after=payload)
    rows.append(row)
    if batch is not None:
        # The message names the command's id, which the batch's insert sets.
        batch.add_command(command, lambda: _set_enqueue_message(row, command, route))
    else:
        _set_enqueue_message(row, command, route)
    return command


def _set_enqueue_message(row, command, route) -> None:
    row.message = (
        f"Command {command.pk} ({command.command_type}) queued for "
        f"{route.destination.slug} in {command.get_mode_display().lower()} mode."
    )


def _row(step, message, record, command, *, after=None):
    return ledger.build(step, message, record_key=record.record_key, command=command, payload_after=after)
