import datetime

from django.db import migrations
from django.utils import timezone

# Daily schedules first due at these UTC times. Cron schedules would need the
# croniter package, which Meshline does not install.
SCHEDULES = {
    "meshline-nightly-reconciliation": ("reporting.tasks.nightly_reconciliation", 2, 0),
    "meshline-nightly-drift": ("reporting.tasks.nightly_drift", 2, 30),
}


def _next_at(hour: int, minute: int) -> datetime.datetime:
    now = timezone.now()
    due = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return due if due > now else due + datetime.timedelta(days=1)


def create_schedules(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for name, (func, hour, minute) in SCHEDULES.items():
        Schedule.objects.update_or_create(
            name=name,
            defaults={
                "func": func,
                "schedule_type": "D",
                "next_run": _next_at(hour, minute),
                "repeats": -1,
            },
        )


def remove_schedules(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name__in=SCHEDULES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("reporting", "0001_initial"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [migrations.RunPython(create_schedules, remove_schedules)]
