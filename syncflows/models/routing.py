from django.db import models

from meshline.fields import EncryptedJSONField


class Destination(models.Model):
    """An ERP instance and the adapter that speaks to it."""

    class Adapter(models.TextChoices):
        SANDBOX = "sandbox", "Sandbox ERP"
        TRYTON = "tryton", "Tryton (JSON-RPC)"
        REST = "rest", "REST JSON API"

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    adapter = models.CharField(max_length=16, choices=Adapter.choices)
    settings = models.JSONField(
        default=dict, blank=True, help_text="Adapter settings such as URL and database."
    )
    credentials = EncryptedJSONField(
        blank=True, null=True, help_text="Passwords or tokens; stored encrypted."
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.name


class Route(models.Model):
    """A routing-table row. The most specific matching row wins.

    Empty business unit, region or object type match anything. Among matching
    rows, the one with more filled fields wins, then the lower priority number.
    """

    class Mode(models.TextChoices):
        LIVE = "live", "Live"
        DRY_RUN = "dry_run", "Dry run (preflight only)"

    business_unit = models.CharField(max_length=64, blank=True)
    region = models.CharField(max_length=64, blank=True)
    object_type = models.CharField(max_length=64, blank=True)
    destination = models.ForeignKey(Destination, on_delete=models.PROTECT, related_name="routes")
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.LIVE)
    priority = models.PositiveIntegerField(default=100)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["priority", "id"]

    def __str__(self):
        scope = "/".join(v or "*" for v in (self.business_unit, self.region, self.object_type))
        return f"{scope} → {self.destination.slug} ({self.mode})"

    @property
    def specificity(self) -> int:
        return sum(bool(v) for v in (self.business_unit, self.region, self.object_type))
