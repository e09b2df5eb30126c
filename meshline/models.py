"""Security state: API tokens, used webhook signatures and login lock-outs."""

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

# Scopes an API token may hold. A token also needs its user's role for each
# action, so a scope narrows what the user may do and never widens it.
SCOPE_READ = "read"
SCOPE_INGEST = "ingest"
SCOPE_ACT = "act"
SCOPE_ADMIN = "admin"
SCOPE_CHOICES = [
    (SCOPE_READ, "Read deliveries, events, commands, cases and traces"),
    (SCOPE_INGEST, "Send or import CRM deliveries"),
    (SCOPE_ACT, "Act on exception cases (retry, replay, resolve)"),
    (SCOPE_ADMIN, "Change configuration"),
]
TOKEN_PREFIX = "ml_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ApiToken(models.Model):
    """An API token of one integration user. Only its SHA-256 is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="What the token is for.")
    scopes = models.JSONField(default=list, blank=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters of the token, so that an admin can tell tokens apart.
    key_prefix = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({self.key_prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def issue(self) -> str:
        """Set a new random token on this row and return it; it is not stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(40)
        self.key_hash = hash_token(token)
        self.key_prefix = token[:10]
        return token

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class UsedSignature(models.Model):
    """A webhook signature already accepted, kept to reject its replay.

    Rows older than twice the signature window are purged: a signature that
    old fails the timestamp check anyway."""

    connector_id = models.PositiveBigIntegerField()
    digest = models.CharField(max_length=64, help_text="SHA-256 of the signature.")
    seen_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            # Replay protection: a second insert of the same signature fails.
            models.UniqueConstraint(
                fields=["connector_id", "digest"], name="used_signature_unique"
            )
        ]

    def __str__(self):
        return f"signature {self.digest[:12]} on connector {self.connector_id}"


class LoginThrottle(models.Model):
    """Failed logins for one user name or one client IP, and any lock-out."""

    class Kind(models.TextChoices):
        USERNAME = "username", "User name"
        IP = "ip", "Client IP"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    value = models.CharField(max_length=150)
    failures = models.PositiveIntegerField(default=0)
    first_failure_at = models.DateTimeField()
    last_failure_at = models.DateTimeField()
    locked_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_failure_at"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "value"], name="login_throttle_key")
        ]

    def __str__(self):
        return f"{self.get_kind_display()} {self.value}"

    def is_locked(self, now=None) -> bool:
        now = now or timezone.now()
        return self.locked_until is not None and self.locked_until > now
