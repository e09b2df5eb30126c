"""API access for reading records back from a CRM, and the health of those reads."""

from decimal import Decimal

from django.db import models

from meshline.fields import EncryptedJSONField

# The most recent errors kept on a connector's health row, newest first.
RECENT_ERRORS_KEPT = 20


class ConnectorApiAccess(models.Model):
    """Settings and credentials for reading records back from a connector's CRM API.

    Credentials come from ``credentials`` (stored encrypted) or, when that is
    empty, from the environment variable named by ``credentials_env`` (or its
    ``_FILE`` form), as a JSON object. Keys: ``token`` for a HubSpot private
    app token or a Pipedrive API token; ``client_id``, ``client_secret`` and
    ``refresh_token`` for OAuth 2.0.
    """

    class Crm(models.TextChoices):
        HUBSPOT = "hubspot", "HubSpot CRM v3"
        SALESFORCE = "salesforce", "Salesforce REST"
        PIPEDRIVE = "pipedrive", "Pipedrive API v1"

    class AuthType(models.TextChoices):
        TOKEN = "token", "Private app token or API token"
        OAUTH = "oauth", "OAuth 2.0 with a refresh token"

    connector = models.OneToOneField(
        "syncflows.Connector", on_delete=models.CASCADE, related_name="api_access"
    )
    crm = models.CharField(max_length=16, choices=Crm.choices)
    base_url = models.URLField(
        help_text=(
            "The API root, for example https://api.hubapi.com, the Salesforce "
            "instance URL or https://example.pipedrive.com."
        )
    )
    token_url = models.URLField(
        blank=True,
        help_text="The OAuth token endpoint; empty means the CRM's usual endpoint.",
    )
    api_version = models.CharField(
        max_length=16,
        blank=True,
        help_text="Salesforce REST API version, such as v60.0.",
    )
    auth_type = models.CharField(
        max_length=8, choices=AuthType.choices, default=AuthType.TOKEN
    )
    credentials = EncryptedJSONField(
        blank=True, null=True, help_text="Tokens and client secrets; stored encrypted."
    )
    credentials_env = models.CharField(
        max_length=100,
        blank=True,
        help_text=(
            "Name of an environment variable (or NAME_FILE) holding the "
            "credentials JSON."
        ),
    )
    # The current OAuth access token, written by Meshline after each refresh.
    access_token = EncryptedJSONField(blank=True, null=True)
    token_expires_at = models.DateTimeField(null=True, blank=True)
    requests_per_second = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("5"),
        help_text=(
            "Maximum API calls per second to this CRM from all worker processes "
            "together; 0 means no pace. Calls are spaced 1.1 / rate seconds "
            "apart, so network delays of up to 0.1 s cannot put more than rate "
            "calls into one second."
        ),
    )
    max_attempts = models.PositiveSmallIntegerField(
        default=4, help_text="Attempts per API call before the read is deferred."
    )
    max_wait_seconds = models.PositiveIntegerField(
        default=30,
        help_text=(
            "Longest wait, in seconds, for one retry inside a read. A longer "
            "Retry-After defers the read to a later retry."
        ),
    )
    timeout_seconds = models.PositiveIntegerField(
        default=20, help_text="Timeout per API call."
    )
    page_size = models.PositiveIntegerField(default=100, help_text="Records per page.")
    settings = models.JSONField(
        default=dict,
        blank=True,
        help_text="Kind-specific settings; none are read yet.",
    )
    is_active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "connector API access"
        verbose_name_plural = "connector API access"

    def __str__(self):
        return f"API access of {self.connector_id}"


class ConnectorHealth(models.Model):
    """The state of a connector's CRM reads, shown on the connector health page."""

    connector = models.OneToOneField(
        "syncflows.Connector", on_delete=models.CASCADE, related_name="health"
    )
    last_read_at = models.DateTimeField(null=True, blank=True)
    last_read_ok_at = models.DateTimeField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    rate_limited_until = models.DateTimeField(null=True, blank=True)
    rate_limit_hits = models.PositiveIntegerField(default=0)
    rate_limit_remaining = models.IntegerField(
        null=True,
        blank=True,
        help_text="Calls left in the CRM's window, from its last answer.",
    )
    token_refreshes = models.PositiveIntegerField(default=0)
    auth_failed_at = models.DateTimeField(null=True, blank=True)
    # Newest first, at most RECENT_ERRORS_KEPT of
    # {"at", "reason_code", "status", "crm_code", "message"}.
    recent_errors = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "connector health"

    def __str__(self):
        return f"health of {self.connector_id}"


class CrmPace(models.Model):
    """The next free call slot and the 429 block of one connector's CRM API.

    The PostgreSQL pacer of ``syncflows.crm.pacing`` writes these rows on its
    own autocommit connection, never inside the pipeline's transaction.
    ``connector_id`` is therefore no foreign key: that connection must neither
    wait for locks on connector rows nor fail on a connector that the
    pipeline's transaction has not committed yet.
    """

    connector_id = models.BigIntegerField(primary_key=True)
    next_slot_at = models.DateTimeField()
    blocked_until = models.DateTimeField(
        help_text="No call starts before this, after a 429 or REQUEST_LIMIT_EXCEEDED."
    )
    # The start of the slot most recently requested, so that one UPDATE can
    # return it; the other columns hold the new values after that UPDATE.
    last_start_at = models.DateTimeField()

    class Meta:
        verbose_name = "CRM call pace"

    def __str__(self):
        return f"CRM call pace of {self.connector_id}"
