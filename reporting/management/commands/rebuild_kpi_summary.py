from django.core.management.base import BaseCommand

from reporting.services.summary import rebuild


class Command(BaseCommand):
    help = (
        "Recompute the KPI summary from every sync run, command and invoice "
        "snapshot. Run it after migrating a database that has runs, when the log "
        "reports that the summary disagrees with its facts, and after changing "
        "runs, commands or cases outside Meshline's services."
    )

    def handle(self, *args, **options):
        count = rebuild()
        self.stdout.write(f"KPI summary rebuilt from {count} runs and commands.")
