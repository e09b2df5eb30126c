"""Reversing an ERP document that a command created.

The destination adapter's ``compensate(result)`` reverses the document (the
sandbox cancels the order). The command becomes ``compensated`` and the
record's ``order_generation`` is raised, so that a replay afterwards derives
a new idempotency key and creates a new document instead of finding the
reversed one.
"""

import logging

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from meshline.roles import require
from syncflows.adapters import AdapterError, get_adapter
from syncflows.models import Command, LedgerEntry, SourceRecord
from syncflows.services import ledger
from syncflows.services.errors import ActionRefused

logger = logging.getLogger(__name__)


def check_compensable(command) -> None:
    """Raise ActionRefused unless ``command`` created an ERP document."""
    if command.state != Command.State.SUCCEEDED:
        raise ActionRefused(
            f"Command {command.pk} is {command.get_state_display().lower()}; only a "
            "succeeded command has an ERP document to reverse."
        )
    if command.mode != Command.Mode.LIVE or not (command.result or {}).get("reference"):
        raise ActionRefused(
            f"Command {command.pk} wrote no ERP document (dry run or no reference), "
            "so there is nothing to reverse."
        )


def compensate_command(command_id: int, *, acting_user, note: str = "") -> dict:
    """Reverse the ERP document of a succeeded command; return the adapter's outcome."""
    require(acting_user, "retry_command")
    with transaction.atomic():
        command = (
            Command.objects.select_for_update()
            .select_related("destination", "record")
            .get(pk=command_id)
        )
        check_compensable(command)
        document = command.erp_document_number or command.erp_reference
        adapter = get_adapter(command.destination)
        try:
            # The adapter contract makes compensate idempotent, so if this
            # transaction rolls back after the ERP reversed the document, a
            # second attempt reports it as already reversed.
            outcome = adapter.compensate(command.result)
        except AdapterError as exc:
            logger.warning(
                "Compensating command %s failed: %s", command.pk, exc.reason_code
            )
            raise ActionRefused(
                f"The ERP did not reverse {document}: {exc.message}"
            ) from None
        finally:
            adapter.close()
        Command.objects.filter(pk=command.pk).update(
            state=Command.State.COMPENSATED, updated_at=timezone.now()
        )
        SourceRecord.objects.filter(pk=command.record_id).update(
            order_generation=F("order_generation") + 1
        )
        message = (
            f"{acting_user} reversed {document}: "
            f"{outcome.get('message', outcome.get('action', 'done'))}"
        )
        ledger.write(
            LedgerEntry.Step.COMPENSATE,
            message + (f" {note}" if note else ""),
            record_key=command.record.record_key,
            command=command,
            actor=acting_user,
            payload_before=command.result,
            payload_after=outcome,
        )
    logger.info("Command %s compensated by user %s", command_id, acting_user.pk)
    return outcome
