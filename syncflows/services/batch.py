"""Writing the outcome of many record changes with one statement per table.

The pipeline plans each change of a batch in Python and hands its rows to a
``ChangeBatch`` instead of saving them one by one. ``flush`` then writes the
commands, the runs, the ledger rows and the new statuses with a bulk insert or
a single UPDATE each. A change whose outcome needs more than plain rows (a
failure that opens a case, a CRM read-back, a shadow version, a superseded
command) raises ``NeedsOwnTransaction``. The pipeline then flushes what the
batch contains and processes that change on its own, the way it always did.
"""

from collections import defaultdict

from django.utils import timezone

from syncflows.models import Command, InboundEvent, LedgerEntry, RecordChange, SyncRun
from syncflows.services.failures import report_resolutions


class NeedsOwnTransaction(Exception):
    """A change that the batch cannot write as plain rows."""


class ChangeBatch:
    def __init__(self, live_commands: dict[str, Command]):
        # Live commands by idempotency key: those stored before the batch and
        # those the batch creates, so two runs of one key see each other.
        self.live_commands = live_commands
        self.commands: list[tuple] = []
        self.runs: list[SyncRun] = []
        self.rows: list[LedgerEntry] = []
        self.statuses: dict[str, list[int]] = defaultdict(list)
        self.event_ids: list[int] = []
        self.resolutions: list[tuple] = []
        self.records: set[int] = set()
        self._pending = None

    # Planning one change. Its rows stay apart until ``end_change``, so that a
    # change that needs its own transaction leaves nothing behind.

    def begin_change(self, change) -> None:
        self._pending = {"commands": [], "runs": [], "rows": [], "resolutions": []}
        self._change = change

    def add_rows(self, rows) -> None:
        self._pending["rows"].extend(rows)

    def add_run(self, run, rows) -> None:
        self._pending["runs"].append(run)
        self._pending["rows"].extend(rows)

    def add_command(self, command, after_insert) -> None:
        """Add a new command; ``after_insert()`` runs once it has its id."""
        self._pending["commands"].append((command, after_insert))
        self.live_commands[command.idempotency_key] = command

    def add_resolution(self, record_key: str, brief_id: int, run) -> None:
        self._pending["resolutions"].append((record_key, brief_id, run))

    def end_change(self, status: str) -> None:
        pending, change = self._pending, self._change
        self.commands.extend(pending["commands"])
        self.runs.extend(pending["runs"])
        self.rows.extend(pending["rows"])
        self.resolutions.extend(pending["resolutions"])
        self.statuses[status].append(change.pk)
        self.event_ids.append(change.event_id)
        self.records.add(change.record_id)
        self._pending = None

    def discard_change(self) -> None:
        for command, _after in self._pending["commands"]:
            self.live_commands.pop(command.idempotency_key, None)
        self._pending = None

    def forget_record(self, record_id: int) -> None:
        """Drop the record's live commands, to be read again from the database."""
        for key in [key for key, command in self.live_commands.items() if command.record_id == record_id]:
            del self.live_commands[key]

    def holds_record(self, record_id: int) -> bool:
        return record_id in self.records

    def flush(self) -> list[int]:
        """Write everything planned so far; return the new command ids."""
        if not self.statuses:
            return []
        now = timezone.now()
        Command.objects.bulk_create([command for command, _after in self.commands])
        for _command, after_insert in self.commands:
            after_insert()
        SyncRun.objects.bulk_create(self.runs)
        LedgerEntry.objects.bulk_create(self.rows)
        for status, change_ids in self.statuses.items():
            RecordChange.objects.filter(pk__in=change_ids).update(status=status, processed_at=now)
        InboundEvent.objects.filter(pk__in=self.event_ids).update(
            status=InboundEvent.Status.PROCESSED, processed_at=now
        )
        if self.resolutions:
            report_resolutions(self.resolutions)
        command_ids = [command.pk for command, _after in self.commands]
        self.commands, self.runs, self.rows, self.resolutions = [], [], [], []
        self.statuses, self.event_ids, self.records = defaultdict(list), [], set()
        return command_ids
