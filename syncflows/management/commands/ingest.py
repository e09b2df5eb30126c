import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone
from django.utils.datastructures import CaseInsensitiveMapping

from syncflows.connectors import DeliveryRequest
from syncflows.models import Command as OutboxCommand
from syncflows.models import Connector, Delivery, RecordChange, SyncRun
from syncflows.services.receive import receive


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


class Command(BaseCommand):
    help = (
        "Feed saved deliveries through the same receive path as the webhook, for "
        "backfills and replays. The file is one raw body, a JSON array of bodies, or "
        "JSON Lines (one body a line). Signatures are not checked: the file is trusted."
    )

    def add_arguments(self, parser):
        parser.add_argument("connector", help="Slug of the connector the deliveries belong to.")
        parser.add_argument("file", help="Path of the saved delivery; - reads standard input.")
        parser.add_argument(
            "--format",
            choices=["auto", "raw", "array", "jsonl"],
            default="auto",
            help="How the file stores deliveries; auto takes .jsonl as JSON Lines, else raw.",
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Return only when every command these deliveries caused has finished or failed.",
        )
        parser.add_argument(
            "--timeout",
            type=_positive_seconds,
            default=300,
            help="Seconds --wait waits at most (default 300).",
        )
        parser.add_argument(
            "--inline",
            action="store_true",
            help="Run the pipeline and dispatch in this process instead of on workers.",
        )

    def handle(self, *args, **options):
        connector = Connector.objects.filter(slug=options["connector"]).first()
        if connector is None:
            known = ", ".join(Connector.objects.values_list("slug", flat=True)) or "none"
            raise CommandError(f"No connector is named {options['connector']!r}. Known: {known}.")
        bodies = self._read_bodies(options["file"], options["format"])
        if options["inline"]:
            from django.test.utils import override_settings

            with override_settings(MESHLINE_SYNC_PIPELINE=True):
                delivery_ids = self._receive_all(connector, bodies)
        else:
            delivery_ids = self._receive_all(connector, bodies)
        if options["wait"]:
            self._wait(delivery_ids, options["timeout"])

    def _read_bodies(self, name: str, fmt: str) -> list[bytes]:
        try:
            data = Path(name).read_bytes() if name != "-" else __import__("sys").stdin.buffer.read()
        except OSError as exc:
            raise CommandError(f"Cannot read {name}: {exc.strerror}.") from exc
        if fmt == "auto":
            fmt = "jsonl" if name.endswith((".jsonl", ".ndjson")) else "raw"
        if fmt == "raw":
            return [data]
        if fmt == "jsonl":
            return [line for line in data.splitlines() if line.strip()]
        try:
            items = json.loads(data)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{name} is not a JSON array: {exc.msg} at line {exc.lineno}.") from exc
        if not isinstance(items, list):
            raise CommandError(f"{name} contains a JSON {type(items).__name__}, not an array of deliveries.")
        return [json.dumps(item, ensure_ascii=False).encode() for item in items]

    def _receive_all(self, connector, bodies) -> list[int]:
        delivery_ids, counts = [], {}
        for index, body in enumerate(bodies, start=1):
            request = DeliveryRequest(
                method="POST",
                url=f"file://ingest/{connector.slug}/{index}",
                headers=CaseInsensitiveMapping({"Content-Type": "application/json"}),
                body=body,
                received_at=timezone.now(),
                source=Delivery.Source.FILE,
                verified=True,
            )
            # Deferred, as the webhook endpoint stores a delivery.
            result = receive(connector, request, defer=True)
            counts[result.status] = counts.get(result.status, 0) + 1
            if result.delivery is not None:
                delivery_ids.append(result.delivery.pk)
            if result.error is not None:
                stored = f" (stored as delivery {result.delivery.pk})" if result.delivery else ""
                self.stderr.write(
                    f"Body {index} of the file: {result.status}{stored}: {result.error.message}"
                )
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        self.stdout.write(f"{len(bodies)} deliveries: {summary}.")
        return delivery_ids

    def _wait(self, delivery_ids, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        changes = RecordChange.objects.filter(event__delivery_id__in=delivery_ids)
        stored = Delivery.objects.filter(pk__in=delivery_ids, status=Delivery.Status.RECEIVED)
        while time.monotonic() < deadline:
            pending_changes = stored.count() + changes.filter(status=RecordChange.Status.APPLIED).count()
            command_ids = SyncRun.objects.filter(change__in=changes).values("command_id")
            open_commands = OutboxCommand.objects.filter(
                Q(pk__in=command_ids), state__in=OutboxCommand.OPEN_STATES
            ).count()
            if not pending_changes and not open_commands:
                states = OutboxCommand.objects.filter(pk__in=command_ids).values_list(
                    "state", flat=True
                )
                tally = {}
                for state in states:
                    tally[state] = tally.get(state, 0) + 1
                text = ", ".join(f"{n} {s}" for s, n in sorted(tally.items())) or "no commands"
                self.stdout.write(f"Finished: {text}.")
                return
            time.sleep(0.5)
        raise CommandError(
            f"Timed out after {timeout:.0f} s with work still open: is a worker running "
            "(python manage.py qcluster)? Use --inline to run without one."
        )
