"""Brief lifecycle: version rollout fields, approvals, audit, synthetic tests,
shadow diffs and shadow results, and the nightly synthetic-test schedule."""

import datetime

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    # Runs the synthetic tests of every active and canary brief version, daily
    # from the next 02:00 UTC.
    now = datetime.datetime.now(datetime.UTC)
    first = now.replace(hour=2, minute=0, second=0, microsecond=0)
    if first <= now:
        first += datetime.timedelta(days=1)
    Schedule.objects.update_or_create(
        name="meshline-synthetic-nightly",
        defaults={
            "func": "syncflows.services.synthetic.run_nightly",
            "schedule_type": "D",
            "repeats": -1,
            "next_run": first,
        },
    )


def remove_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.filter(name="meshline-synthetic-nightly").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("syncflows", "0003_readback_and_held"),
        ("django_q", "0018_task_success_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="briefversion",
            name="approved_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="briefversion",
            name="based_on",
            field=models.ForeignKey(
                blank=True,
                help_text="The version this draft was copied from.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="syncflows.briefversion",
            ),
        ),
        migrations.AddField(
            model_name="briefversion",
            name="canary_business_unit",
            field=models.CharField(
                blank=True,
                help_text="Business unit that runs this version while the others keep the active one.",
                max_length=64,
            ),
        ),
        migrations.AddField(
            model_name="briefversion",
            name="canary_started_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="briefversion",
            name="shadow_started_at",
            field=models.DateTimeField(
                blank=True,
                help_text="Set while the version runs in shadow mode: mapped and diffed, never sent.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="briefversion",
            name="submitted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="briefversion",
            name="triggers",
            field=models.ManyToManyField(
                blank=True,
                help_text="The triggers this version runs on. Activating the version copies them to the brief; an empty list means the brief's triggers.",
                related_name="brief_versions",
                to="syncflows.trigger",
            ),
        ),
        migrations.AddConstraint(
            model_name="briefversion",
            constraint=models.UniqueConstraint(
                condition=models.Q(("canary_business_unit", ""), _negated=True),
                fields=("brief",),
                name="brief_one_canary_version",
            ),
        ),
        migrations.AddConstraint(
            model_name="briefversion",
            constraint=models.UniqueConstraint(
                condition=models.Q(("state__in", ["draft", "in_review"])),
                fields=("brief",),
                name="brief_one_open_version",
            ),
        ),
        migrations.CreateModel(
            name="ShadowDiff",
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
                ("sample_size", models.PositiveIntegerField()),
                ("summary", models.JSONField(default=dict)),
                ("rows", models.JSONField(default=list)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "baseline",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="syncflows.briefversion",
                    ),
                ),
                (
                    "requested_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "version",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="shadow_diffs",
                        to="syncflows.briefversion",
                    ),
                ),
            ],
            options={
                "ordering": ["-id"],
            },
        ),
        migrations.CreateModel(
            name="SyntheticRun",
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
                    "cause",
                    models.CharField(
                        choices=[
                            ("save", "Draft saved"),
                            ("nightly", "Nightly run"),
                            ("manual", "Run by hand"),
                        ],
                        max_length=16,
                    ),
                ),
                ("passed", models.PositiveIntegerField(default=0)),
                ("failed", models.PositiveIntegerField(default=0)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "version",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="synthetic_runs",
                        to="syncflows.briefversion",
                    ),
                ),
            ],
            options={
                "ordering": ["-id"],
            },
        ),
        migrations.CreateModel(
            name="SyntheticTest",
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
                ("name", models.CharField(max_length=200)),
                (
                    "keyword",
                    models.CharField(
                        help_text="One of the brief's keywords; results group by it.",
                        max_length=64,
                    ),
                ),
                ("payload", models.JSONField()),
                ("expected_command", models.JSONField(blank=True, null=True)),
                ("expected_reason", models.CharField(blank=True, max_length=32)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "brief",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="synthetic_tests",
                        to="syncflows.brief",
                    ),
                ),
                (
                    "created_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["keyword", "name"],
            },
        ),
        migrations.CreateModel(
            name="SyntheticResult",
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
                ("passed", models.BooleanField()),
                ("reason_code", models.CharField(blank=True, max_length=32)),
                ("message", models.TextField(blank=True)),
                ("command", models.JSONField(blank=True, null=True)),
                (
                    "run",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="results",
                        to="syncflows.syntheticrun",
                    ),
                ),
                (
                    "test",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="results",
                        to="syncflows.synthetictest",
                    ),
                ),
            ],
            options={
                "ordering": ["test__keyword", "test__name"],
            },
        ),
        migrations.CreateModel(
            name="TriggerChange",
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
                ("number", models.PositiveIntegerField()),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("draft", "Draft"),
                            ("in_review", "In review"),
                            ("approved", "Approved"),
                            ("active", "Active"),
                            ("retired", "Retired"),
                        ],
                        default="draft",
                        max_length=16,
                    ),
                ),
                ("object_type", models.CharField(max_length=64)),
                ("condition", models.TextField()),
                (
                    "reason",
                    models.TextField(
                        blank=True, help_text="Why the condition changes."
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("submitted_at", models.DateTimeField(blank=True, null=True)),
                ("approved_at", models.DateTimeField(blank=True, null=True)),
                ("activated_at", models.DateTimeField(blank=True, null=True)),
                (
                    "created_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "trigger",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="changes",
                        to="syncflows.trigger",
                    ),
                ),
                (
                    "trigger_version",
                    models.ForeignKey(
                        blank=True,
                        help_text="The trigger version written when this change became active.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="syncflows.triggerversion",
                    ),
                ),
            ],
            options={
                "ordering": ["trigger", "-number"],
            },
        ),
        migrations.CreateModel(
            name="BriefAudit",
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
                ("action", models.CharField(max_length=32)),
                ("from_state", models.CharField(blank=True, max_length=16)),
                ("to_state", models.CharField(blank=True, max_length=16)),
                ("comment", models.TextField(blank=True)),
                ("detail", models.JSONField(blank=True, default=dict)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "actor",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "brief",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="audit",
                        to="syncflows.brief",
                    ),
                ),
                (
                    "version",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="audit",
                        to="syncflows.briefversion",
                    ),
                ),
                (
                    "trigger_change",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="audit",
                        to="syncflows.triggerchange",
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "brief audit entries",
                "ordering": ["-id"],
            },
        ),
        migrations.CreateModel(
            name="Approval",
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
                    "side",
                    models.CharField(
                        choices=[
                            ("crm", "CRM side (Sales Ops)"),
                            ("erp", "ERP side (Finance)"),
                        ],
                        max_length=8,
                    ),
                ),
                (
                    "decision",
                    models.CharField(
                        choices=[
                            ("approve", "Approved"),
                            ("request_changes", "Changes requested"),
                        ],
                        max_length=16,
                    ),
                ),
                ("comment", models.TextField(blank=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("withdrawn_at", models.DateTimeField(blank=True, null=True)),
                ("withdrawn_reason", models.CharField(blank=True, max_length=200)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "version",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="approvals",
                        to="syncflows.briefversion",
                    ),
                ),
                (
                    "trigger_change",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="approvals",
                        to="syncflows.triggerchange",
                    ),
                ),
            ],
            options={
                "ordering": ["id"],
            },
        ),
        migrations.CreateModel(
            name="ShadowResult",
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
                ("record_key", models.CharField(max_length=300)),
                ("payload", models.JSONField(blank=True, null=True)),
                ("reason_code", models.CharField(blank=True, max_length=32)),
                ("active_reason_code", models.CharField(blank=True, max_length=32)),
                ("differences", models.JSONField(default=list)),
                ("differs", models.BooleanField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "active_version",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="syncflows.briefversion",
                    ),
                ),
                (
                    "change",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="syncflows.recordchange",
                    ),
                ),
                (
                    "version",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="shadow_results",
                        to="syncflows.briefversion",
                    ),
                ),
            ],
            options={
                "ordering": ["-id"],
                "indexes": [
                    models.Index(
                        fields=["version", "differs"], name="shadow_result_summary"
                    )
                ],
            },
        ),
        migrations.AddConstraint(
            model_name="synthetictest",
            constraint=models.UniqueConstraint(
                fields=("brief", "name"), name="synthetic_test_name"
            ),
        ),
        migrations.AddConstraint(
            model_name="triggerchange",
            constraint=models.UniqueConstraint(
                fields=("trigger", "number"), name="trigger_change_unique"
            ),
        ),
        migrations.AddConstraint(
            model_name="triggerchange",
            constraint=models.UniqueConstraint(
                condition=models.Q(("state__in", ["draft", "in_review"])),
                fields=("trigger",),
                name="trigger_one_open_change",
            ),
        ),
        migrations.AddConstraint(
            model_name="approval",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("trigger_change__isnull", True), ("version__isnull", False)
                    ),
                    models.Q(
                        ("trigger_change__isnull", False), ("version__isnull", True)
                    ),
                    _connector="OR",
                ),
                name="approval_one_subject",
            ),
        ),
        migrations.AddConstraint(
            model_name="approval",
            constraint=models.UniqueConstraint(
                condition=models.Q(
                    ("decision", "approve"), ("withdrawn_at__isnull", True)
                ),
                fields=("version", "side"),
                name="approval_one_per_version_side",
            ),
        ),
        migrations.AddConstraint(
            model_name="approval",
            constraint=models.UniqueConstraint(
                condition=models.Q(
                    ("decision", "approve"), ("withdrawn_at__isnull", True)
                ),
                fields=("trigger_change", "side"),
                name="approval_one_per_trigger_change_side",
            ),
        ),
        migrations.RunPython(create_schedule, remove_schedule),
    ]
