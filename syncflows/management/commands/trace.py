"""Print the path of a CRM record through Meshline, as a timeline or as JSON."""

import json

from django.core.management.base import BaseCommand, CommandError

from syncflows.services.trace import MAX_RECORD_KEYS, build_trace, find_record_keys


class Command(BaseCommand):
    help = (
        "Print the trace of a CRM record: its ledger entries, commands and "
        "exception cases. QUERY is a CRM record id, alias id, record key, ERP "
        "document number or reference, or idempotency key."
    )

    def add_arguments(self, parser):
        parser.add_argument("query", help="The id, key or number to look up.")
        parser.add_argument(
            "--json",
            action="store_true",
            help=(
                "Print the trace as JSON: one object for one matching record, "
                "a list when several match."
            ),
        )

    def handle(self, *args, query, **options):
        record_keys = find_record_keys(query)
        if not record_keys:
            raise CommandError(
                f"No CRM record, alias, ERP document or idempotency key matches "
                f"{query!r}. Check the value, or pass the full record key, such as "
                "hubspot:deal:900000001."
            )
        traces = [build_trace(key) for key in record_keys]
        if options["json"]:
            output = traces[0] if len(traces) == 1 else traces
            self.stdout.write(json.dumps(output, indent=2))
            return
        for trace in traces:
            self.stdout.write(format_timeline(trace))
        if len(record_keys) == MAX_RECORD_KEYS:
            self.stderr.write(
                f"Only the first {MAX_RECORD_KEYS} matching records are shown."
            )


def format_timeline(trace: dict) -> str:
    """Render a trace as readable lines: the record, then one line per step."""
    lines = [f"Record {trace['record_key']}"]
    record = trace["record"]
    if record is None:
        lines.append("  No source record: only ledger entries carry this key.")
    else:
        deleted = ", deleted in the CRM" if record["is_deleted"] else ""
        lines.append(
            f"  connector {record['connector']}, revision {record['revision']}{deleted}"
        )

    lines.append("Timeline:")
    for entry in trace["entries"]:
        lines.append("  " + _entry_line(entry))
    if not trace["entries"]:
        lines.append("  (no ledger entries)")

    if trace["commands"]:
        lines.append("Commands:")
        lines.extend("  " + _command_line(command) for command in trace["commands"])
    if trace["cases"]:
        lines.append("Exception cases:")
        lines.extend("  " + _case_line(case) for case in trace["cases"])
    return "\n".join(lines) + "\n"


def _entry_line(entry: dict) -> str:
    mark = "ok  " if entry["ok"] else "FAIL"
    reason = f" [{entry['reason_code']}]" if entry["reason_code"] else ""
    refs = ", ".join(
        f"{name.removesuffix('_id')} {entry[name]}"
        for name in ("event_id", "command_id", "case_id")
        if entry[name] is not None
    )
    refs = f" ({refs})" if refs else ""
    return (
        f"{entry['created_at']}  {mark} {entry['step_label']}{reason}: "
        f"{entry['message']}{refs}"
    )


def _command_line(command: dict) -> str:
    document = command["erp_document_number"] or command["erp_reference"] or "-"
    reason = f" [{command['reason_code']}]" if command["reason_code"] else ""
    return (
        f"#{command['id']} {command['command_type']} to {command['destination']}: "
        f"{command['state']}{reason}, {command['attempts']} attempt(s), "
        f"ERP document {document}, key {command['idempotency_key']}"
    )


def _case_line(case: dict) -> str:
    owner = case["owner"] or "nobody"
    return (
        f"#{case['id']} {case['state']} [{case['reason_code']}] {case['title']} "
        f"(lane {case['lane']}, owner {owner})"
    )
