from django.conf import settings
from django.db import models


class Brief(models.Model):
    """A business rule for turning CRM records into ERP commands.

    The brief holds the intent in plain words; each BriefVersion holds the
    executable part (mapping, command schema, acceptance expressions).
    """

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    intent = models.TextField(help_text="What this sync is for, in plain words.")
    acceptance_text = models.TextField(
        blank=True, help_text="The acceptance criteria, in plain words."
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    sla_hours = models.PositiveIntegerField(
        default=24, help_text="Hours an exception of this brief may stay open."
    )
    keywords = models.JSONField(
        default=list, blank=True, help_text='Tags such as ["discounts", "CPQ"].'
    )
    triggers = models.ManyToManyField("syncflows.Trigger", related_name="briefs", blank=True)
    create_missing_customers = models.BooleanField(
        default=False,
        help_text="Create a customer the ERP does not know, instead of opening an exception.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def active_version(self):
        return self.versions.filter(state=BriefVersion.State.ACTIVE).first()


class BriefVersion(models.Model):
    class State(models.TextChoices):
        DRAFT = "draft", "Draft"
        IN_REVIEW = "in_review", "In review"
        APPROVED = "approved", "Approved"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    brief = models.ForeignKey(Brief, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.DRAFT)
    command_type = models.CharField(max_length=64, default="sales_order.create")
    mapping = models.JSONField(
        help_text="Command field name to CEL expression over record, children and event."
    )
    command_schema = models.JSONField(help_text="JSON Schema the command must satisfy.")
    acceptance = models.JSONField(
        default=list,
        blank=True,
        help_text='List of {"name", "expression", "message"}; each expression must be true.',
    )
    ready_condition = models.TextField(
        blank=True,
        help_text=(
            "Optional CEL expression; while false the run waits for more changes "
            "(for example line items that have not arrived) instead of failing."
        ),
    )
    read_back = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "What to read back from the CRM before mapping, when the delivery does "
            'not carry it, e.g. {"properties": ["amount"], "associations": ["line_items"]}.'
        ),
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    based_on = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The version this draft was copied from.",
    )
    triggers = models.ManyToManyField(
        "syncflows.Trigger",
        related_name="brief_versions",
        blank=True,
        help_text=(
            "The triggers this version runs on. Activating the version copies them "
            "to the brief; an empty list means the brief's triggers."
        ),
    )
    submitted_at = models.DateTimeField(null=True, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    # Rollout of an approved version beside the active one.
    canary_business_unit = models.CharField(
        max_length=64,
        blank=True,
        help_text="Business unit that runs this version while the others keep the active one.",
    )
    canary_started_at = models.DateTimeField(null=True, blank=True)
    shadow_started_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set while the version runs in shadow mode: mapped and diffed, never sent.",
    )

    class Meta:
        ordering = ["brief", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["brief", "number"], name="brief_version_unique"),
            # One active version per brief: the version the pipeline runs.
            models.UniqueConstraint(
                fields=["brief"],
                condition=models.Q(state="active"),
                name="brief_one_active_version",
            ),
            # One canary per brief: config.load_config picks it by business unit.
            models.UniqueConstraint(
                fields=["brief"],
                condition=~models.Q(canary_business_unit=""),
                name="brief_one_canary_version",
            ),
            # One open version per brief, so edits never fork into two drafts.
            models.UniqueConstraint(
                fields=["brief"],
                condition=models.Q(state__in=["draft", "in_review"]),
                name="brief_one_open_version",
            ),
        ]

    def __str__(self):
        return f"{self.brief.slug} v{self.number}"

    @property
    def is_canary(self) -> bool:
        return bool(self.canary_business_unit)

    @property
    def is_shadow(self) -> bool:
        return self.shadow_started_at is not None

    @property
    def was_approved(self) -> bool:
        """True for a version that passed sign-off or ran as the active version."""
        return self.approved_at is not None or self.activated_at is not None
