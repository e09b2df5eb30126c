from django.conf import settings
from django.db import models


class Trigger(models.Model):
    """A CEL condition over a record change that starts sync runs for briefs.

    The condition sees ``record`` (state after the change), ``previous``,
    ``changed`` (list of field names) and ``event`` (type, connector, times).
    Every save of the condition adds a TriggerVersion; old versions are kept.
    """

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    object_type = models.CharField(max_length=64)
    connector = models.ForeignKey(
        "syncflows.Connector",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text="Leave empty to match changes from every connector.",
    )
    condition = models.TextField(help_text="CEL expression that must be true.")
    is_active = models.BooleanField(default=True)
    current_version = models.ForeignKey(
        "syncflows.TriggerVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        editable=False,
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.name


class TriggerVersion(models.Model):
    trigger = models.ForeignKey(Trigger, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    object_type = models.CharField(max_length=64)
    condition = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["trigger", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["trigger", "number"], name="trigger_version_unique")
        ]

    def __str__(self):
        return f"{self.trigger.slug} v{self.number}"
