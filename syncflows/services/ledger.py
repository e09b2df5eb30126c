"""Writing ledger rows: one per pipeline step, append-only."""

from syncflows.models import LedgerEntry


def write(step: str, message: str, *, ok: bool = True, **refs) -> LedgerEntry:
    """Add one ledger row. ``refs`` are LedgerEntry fields such as record_key,
    event, command, run, payload_before, payload_after, reason_code, actor."""
    return LedgerEntry.objects.create(step=step, message=message, ok=ok, **refs)


def build(step: str, message: str, *, ok: bool = True, **refs) -> LedgerEntry:
    """Make an unsaved row, for bulk_create on hot paths."""
    return LedgerEntry(step=step, message=message, ok=ok, **refs)
