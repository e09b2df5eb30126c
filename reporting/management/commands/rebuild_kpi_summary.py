from django.core.management.base import BaseCommand

from reporting.services.summary import fold, request_rebuild


class Command(BaseCommand):
    help = (
        "Recompute the KPI summary from every sync run and command. Run it after "
        "changing runs, commands or exception cases outside Meshline's services, "
        "which write no ledger row for the folds to find."
    )

    def handle(self, *args, **options):
        request_rebuild()
        count = fold()
        self.stdout.write(f"KPI summary rebuilt from {count} runs and commands.")
