import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

ESCALATION_SCHEDULE = "meshline-escalation"


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    # Sends SLA reminders, reassigns breached cases, notifies executives and
    # retries failed notifications.
    Schedule.objects.update_or_create(
        name=ESCALATION_SCHEDULE,
        defaults={
            "func": "exceptions.tasks.escalation_task",
            "schedule_type": "I",
            "minutes": 1,
            "repeats": -1,
        },
    )


def remove_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.filter(name=ESCALATION_SCHEDULE).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("exceptions", "0001_initial"),
        ("django_q", "0018_task_success_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="BulkAction",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                (
                    "action",
                    models.CharField(
                        choices=[
                            ("assign", "Assign"),
                            ("retry", "Retry"),
                            ("resolve", "Resolve"),
                        ],
                        max_length=8,
                    ),
                ),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("queued", "Queued"),
                            ("running", "Running"),
                            ("done", "Done"),
                            ("failed", "Failed"),
                        ],
                        default="queued",
                        max_length=8,
                    ),
                ),
                ("case_ids", models.JSONField(default=list)),
                ("params", models.JSONField(blank=True, default=dict)),
                ("total", models.PositiveIntegerField(default=0)),
                ("done", models.PositiveIntegerField(default=0)),
                ("succeeded", models.PositiveIntegerField(default=0)),
                ("skipped", models.PositiveIntegerField(default=0)),
                ("errors", models.JSONField(blank=True, default=list)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "requested_by",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"ordering": ["-id"]},
        ),
        migrations.CreateModel(
            name="Notification",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                (
                    "channel",
                    models.CharField(
                        choices=[("slack", "Slack webhook"), ("email", "E-mail")],
                        max_length=8,
                    ),
                ),
                (
                    "event",
                    models.CharField(
                        help_text="opened, reminder, reassigned, …", max_length=32
                    ),
                ),
                ("recipients", models.JSONField(blank=True, default=list)),
                ("subject", models.CharField(max_length=300)),
                ("body", models.TextField()),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("sent", "Sent"),
                            ("failed", "Failed"),
                        ],
                        default="pending",
                        max_length=8,
                    ),
                ),
                ("attempts", models.PositiveSmallIntegerField(default=0)),
                ("next_attempt_at", models.DateTimeField()),
                ("last_error", models.TextField(blank=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("sent_at", models.DateTimeField(blank=True, null=True)),
                (
                    "case",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="notifications",
                        to="exceptions.exceptioncase",
                    ),
                ),
            ],
            options={"ordering": ["-id"]},
        ),
        migrations.AddIndex(
            model_name="exceptioncase",
            index=models.Index(
                condition=models.Q(("state__in", ["open", "assigned", "acknowledged"])),
                fields=["due_at", "id"],
                name="case_open_by_due",
            ),
        ),
        migrations.AddIndex(
            model_name="exceptioncase",
            index=models.Index(
                condition=models.Q(("state__in", ["open", "assigned", "acknowledged"])),
                fields=["owner_user", "due_at"],
                name="case_open_by_owner",
            ),
        ),
        migrations.AddIndex(
            model_name="notification",
            index=models.Index(
                condition=models.Q(("status", "pending")),
                fields=["next_attempt_at"],
                name="notification_due",
            ),
        ),
        migrations.RunPython(create_schedule, remove_schedule),
    ]
