from django.db import models

from meshline.fields import EncryptedJSONField, reveal


class Connector(models.Model):
    """A CRM source that sends deliveries to ``/api/v1/inbound/<slug>/``."""

    class Kind(models.TextChoices):
        HUBSPOT = "hubspot", "HubSpot webhooks v3"
        SALESFORCE_CDC = "salesforce_cdc", "Salesforce Change Data Capture"
        SALESFORCE_OUTBOUND = "salesforce_outbound", "Salesforce Outbound Message"
        PIPEDRIVE = "pipedrive", "Pipedrive webhooks v1 and v2"
        GENERIC = "generic", "Generic JSON webhook"

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    is_active = models.BooleanField(default=True)
    namespace = models.SlugField(
        blank=True,
        help_text=(
            "The CRM instance this connector reads; empty means the slug. Connectors "
            "that read one CRM org (for example CDC and Outbound Messages) share a "
            "namespace, so a deal seen through both is one record and one order."
        ),
    )
    # Signing secrets, newest first. During a rotation two are valid at once.
    secrets = EncryptedJSONField(
        blank=True,
        null=True,
        help_text="Signing secrets or passwords, newest first; stored encrypted.",
    )
    settings = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "Kind-specific settings, for example the public URL HubSpot signs, the "
            "Salesforce organisation id, the Pipedrive user name or generic JSON paths."
        ),
    )
    business_unit = models.CharField(max_length=64, blank=True)
    region = models.CharField(max_length=64, blank=True)
    default_currency = models.CharField(
        max_length=3, blank=True, help_text="ISO 4217 code used when a deal names none."
    )
    time_zone = models.CharField(
        max_length=64, default="UTC", help_text="The CRM's time zone, for close dates."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.slug

    @property
    def record_namespace(self) -> str:
        return self.namespace or self.slug

    @property
    def secret_list(self) -> list[str]:
        value = reveal(self.secrets) or []
        return [value] if isinstance(value, str) else list(value)
