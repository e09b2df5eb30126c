from django.db import migrations


def create_schedules(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    # Re-queues commands left by dead workers and changes whose task message
    # was lost, then dispatches whatever is due.
    Schedule.objects.update_or_create(
        name="meshline-sweep",
        defaults={"func": "syncflows.tasks.sweep_task", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove_schedules(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="meshline-sweep").delete()


class Migration(migrations.Migration):
    dependencies = [("syncflows", "0001_initial"), ("django_q", "0018_task_success_index")]

    operations = [migrations.RunPython(create_schedules, remove_schedules)]
