import json
from pathlib import Path

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder

from reporting.management.commands._subject import acting_user, add_subject_arguments
from reporting.privacy import export_subject


class Command(BaseCommand):
    help = "Export everything Meshline holds about one CRM record, as JSON."

    def add_arguments(self, parser):
        add_subject_arguments(parser)
        parser.add_argument(
            "--output", help="File to write the JSON to; standard output by default."
        )

    def handle(self, *args, query, user, output=None, **options):
        try:
            data = export_subject(query, acting_user=acting_user(user))
        except (LookupError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from exc
        text = json.dumps(data, cls=DjangoJSONEncoder, indent=2, ensure_ascii=False)
        if output:
            Path(output).write_text(text + "\n", encoding="utf-8")
            count = len(data["records"])
            self.stdout.write(f"Wrote {count} record(s) to {output}.")
        else:
            self.stdout.write(text)
