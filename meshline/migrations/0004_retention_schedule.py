import datetime

from django.db import migrations
from django.utils import timezone

NAME = "meshline-daily-retention"
FUNC = "reporting.privacy.retention_task"


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    now = timezone.now()
    # Daily at 03:00 UTC, after the nightly reconciliation and drift runs.
    due = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if due <= now:
        due += datetime.timedelta(days=1)
    Schedule.objects.update_or_create(
        name=NAME,
        defaults={"func": FUNC, "schedule_type": "D", "next_run": due, "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("meshline", "0003_security"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
