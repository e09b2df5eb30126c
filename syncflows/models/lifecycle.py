"""The sign-off trail of brief versions and trigger changes.

Approvals, the audit trail of every transition, synthetic tests with their
results, shadow diffs over stored events and shadow-mode results on live
events. The transitions themselves are in ``syncflows.services.briefs``.
"""

from django.conf import settings
from django.db import models


class TriggerChange(models.Model):
    """A proposed trigger condition with the same lifecycle as a brief version.

    A trigger change decides which deals sync, so it needs the same two
    approvals. Activating it saves the trigger, which adds a TriggerVersion.
    """

    class State(models.TextChoices):
        DRAFT = "draft", "Draft"
        IN_REVIEW = "in_review", "In review"
        APPROVED = "approved", "Approved"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    trigger = models.ForeignKey(
        "syncflows.Trigger", on_delete=models.CASCADE, related_name="changes"
    )
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.DRAFT)
    object_type = models.CharField(max_length=64)
    condition = models.TextField()
    reason = models.TextField(blank=True, help_text="Why the condition changes.")
    trigger_version = models.ForeignKey(
        "syncflows.TriggerVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The trigger version written when this change became active.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["trigger", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["trigger", "number"], name="trigger_change_unique"
            ),
            models.UniqueConstraint(
                fields=["trigger"],
                condition=models.Q(state__in=["draft", "in_review"]),
                name="trigger_one_open_change",
            ),
        ]

    def __str__(self):
        return f"{self.trigger.slug} change {self.number}"

    @property
    def was_approved(self) -> bool:
        return self.approved_at is not None or self.activated_at is not None


class Approval(models.Model):
    """One reviewer's decision on one side of a brief version or trigger change.

    An approval is withdrawn, never deleted, when the version is edited or
    changes are requested, so the page can show who approved what and when.
    """

    class Side(models.TextChoices):
        CRM = "crm", "CRM side (Sales Ops)"
        ERP = "erp", "ERP side (Finance)"

    class Decision(models.TextChoices):
        APPROVE = "approve", "Approved"
        REQUEST_CHANGES = "request_changes", "Changes requested"

    version = models.ForeignKey(
        "syncflows.BriefVersion",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="approvals",
    )
    trigger_change = models.ForeignKey(
        TriggerChange,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="approvals",
    )
    side = models.CharField(max_length=8, choices=Side.choices)
    decision = models.CharField(max_length=16, choices=Decision.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(version__isnull=False, trigger_change__isnull=True)
                | models.Q(version__isnull=True, trigger_change__isnull=False),
                name="approval_one_subject",
            ),
            # One standing approval per side: the approve service checks it too.
            models.UniqueConstraint(
                fields=["version", "side"],
                condition=models.Q(decision="approve", withdrawn_at__isnull=True),
                name="approval_one_per_version_side",
            ),
            models.UniqueConstraint(
                fields=["trigger_change", "side"],
                condition=models.Q(decision="approve", withdrawn_at__isnull=True),
                name="approval_one_per_trigger_change_side",
            ),
        ]

    def __str__(self):
        return f"{self.get_decision_display()} ({self.side}) by {self.user}"


class BriefAudit(models.Model):
    """One transition of a brief version or trigger change. Append-only."""

    brief = models.ForeignKey(
        "syncflows.Brief",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="audit",
    )
    version = models.ForeignKey(
        "syncflows.BriefVersion",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="audit",
    )
    trigger_change = models.ForeignKey(
        TriggerChange,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="audit",
    )
    action = models.CharField(max_length=32)
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    comment = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "brief audit entries"

    def __str__(self):
        return f"{self.action} {self.from_state}→{self.to_state}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise TypeError("Brief audit entries are append-only.")
        super().save(*args, **kwargs)


class SyntheticTest(models.Model):
    """An example payload stored with a brief and the outcome it must have.

    ``payload`` holds the mapping variables: ``record`` and optionally
    ``children``, ``connector`` and ``event``; amounts are decimal strings.
    Exactly one of ``expected_command`` (fields the command must contain, a
    subset) and ``expected_reason`` (a reason code) is set.
    """

    brief = models.ForeignKey(
        "syncflows.Brief", on_delete=models.CASCADE, related_name="synthetic_tests"
    )
    name = models.CharField(max_length=200)
    keyword = models.CharField(
        max_length=64, help_text="One of the brief's keywords; results group by it."
    )
    payload = models.JSONField()
    expected_command = models.JSONField(null=True, blank=True)
    expected_reason = models.CharField(max_length=32, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["keyword", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["brief", "name"], name="synthetic_test_name"
            )
        ]

    def __str__(self):
        return f"{self.brief.slug}: {self.name}"


class SyntheticRun(models.Model):
    """One run of all synthetic tests of a brief against one version."""

    class Cause(models.TextChoices):
        SAVE = "save", "Draft saved"
        NIGHTLY = "nightly", "Nightly run"
        MANUAL = "manual", "Run by hand"

    version = models.ForeignKey(
        "syncflows.BriefVersion",
        on_delete=models.CASCADE,
        related_name="synthetic_runs",
    )
    cause = models.CharField(max_length=16, choices=Cause.choices)
    passed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"synthetic run {self.pk}: {self.passed} passed, {self.failed} failed"

    @property
    def ok(self) -> bool:
        return self.failed == 0


class SyntheticResult(models.Model):
    run = models.ForeignKey(
        SyntheticRun, on_delete=models.CASCADE, related_name="results"
    )
    test = models.ForeignKey(
        SyntheticTest, on_delete=models.CASCADE, related_name="results"
    )
    passed = models.BooleanField()
    reason_code = models.CharField(max_length=32, blank=True)
    message = models.TextField(blank=True)
    command = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["test__keyword", "test__name"]

    def __str__(self):
        return f"{self.test_id}: {'passed' if self.passed else 'failed'}"


class ShadowDiff(models.Model):
    """A replay of stored events through a candidate and the active version.

    ``rows`` lists one entry per CRM record whose command would change, with
    field-level differences; ``summary`` has the counts shown above them.
    Nothing is sent to an ERP or written to the outbox.
    """

    version = models.ForeignKey(
        "syncflows.BriefVersion", on_delete=models.CASCADE, related_name="shadow_diffs"
    )
    baseline = models.ForeignKey(
        "syncflows.BriefVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    sample_size = models.PositiveIntegerField()
    summary = models.JSONField(default=dict)
    rows = models.JSONField(default=list)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"shadow diff {self.pk} of version {self.version_id}"


class ShadowResult(models.Model):
    """A live change mapped by a version in shadow mode: stored, never sent."""

    version = models.ForeignKey(
        "syncflows.BriefVersion",
        on_delete=models.CASCADE,
        related_name="shadow_results",
    )
    active_version = models.ForeignKey(
        "syncflows.BriefVersion",
        null=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    change = models.ForeignKey(
        "syncflows.RecordChange", on_delete=models.CASCADE, related_name="+"
    )
    record_key = models.CharField(max_length=300)
    payload = models.JSONField(null=True, blank=True)
    reason_code = models.CharField(max_length=32, blank=True)
    active_reason_code = models.CharField(max_length=32, blank=True)
    differences = models.JSONField(default=list)
    differs = models.BooleanField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The running summary on the brief page counts by version.
            models.Index(fields=["version", "differs"], name="shadow_result_summary")
        ]

    def __str__(self):
        return f"shadow result {self.pk} for {self.record_key}"
