from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from reporting.management.commands._subject import acting_user
from reporting.privacy import run_retention


class Command(BaseCommand):
    help = (
        "Remove personal fields from deliveries, events, commands, ledger payloads "
        "and closed cases older than MESHLINE_RETENTION_DAYS."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be removed only."
        )
        parser.add_argument(
            "--user", help="User name this run is made for; the schedule runs without."
        )

    def handle(self, *args, dry_run=False, user=None, **options):
        user = acting_user(user) if user else None
        try:
            report = run_retention(acting_user=user, dry_run=dry_run)
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from exc
        verb = "would be removed" if dry_run else "removed"
        days = settings.MESHLINE_RETENTION_DAYS
        self.stdout.write(f"Retention period: {days} days.")
        for name, counts in report.items():
            self.stdout.write(
                f"{name}: {counts['rows']} row(s), {counts['values']} value(s) {verb}"
            )
