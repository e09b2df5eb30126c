from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from reporting.management.commands._subject import acting_user, add_subject_arguments
from reporting.privacy import erase_subject


class Command(BaseCommand):
    help = (
        "Remove the personal fields of one CRM record everywhere Meshline holds "
        "them. Amounts, ids and outcomes stay."
    )

    def add_arguments(self, parser):
        add_subject_arguments(parser)
        parser.add_argument(
            "--yes",
            action="store_true",
            help="Confirm the erasure; it cannot be undone.",
        )

    def handle(self, *args, query, user, yes=False, **options):
        if not yes:
            raise CommandError("Erasure cannot be undone: pass --yes to confirm.")
        try:
            report = erase_subject(query, acting_user=acting_user(user))
        except (LookupError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from exc
        for name, counts in report.items():
            self.stdout.write(
                f"{name}: {counts['rows']} row(s), {counts['values']} value(s) removed"
            )
