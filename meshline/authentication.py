"""API tokens for integration users, and the scope check of the API.

A request carries ``Authorization: Token <token>`` or ``Bearer <token>``. The
token is looked up by its SHA-256, so the database never holds a usable
token. Each API view asks for a policy action from ``meshline.roles``; a token
request also needs the scope that action belongs to.
"""

import logging
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from meshline import roles
from meshline.models import (
    SCOPE_ACT,
    SCOPE_ADMIN,
    SCOPE_INGEST,
    SCOPE_READ,
    ApiToken,
    hash_token,
)

logger = logging.getLogger(__name__)

KEYWORDS = ("token", "bearer")
LAST_USED_PRECISION = timedelta(minutes=1)

# The scope each policy action needs when a token makes the request.
ACTION_SCOPES = {
    "view": SCOPE_READ,
    "ingest": SCOPE_INGEST,
    "triage_case": SCOPE_ACT,
    "replay_event": SCOPE_ACT,
    "retry_command": SCOPE_ACT,
    "fix_case": SCOPE_ACT,
    "edit_configuration": SCOPE_ADMIN,
    "edit_brief": SCOPE_ADMIN,
    "release_brief": SCOPE_ADMIN,
    "run_retention": SCOPE_ADMIN,
    "export_subject": SCOPE_ADMIN,
    "erase_subject": SCOPE_ADMIN,
}


class TokenAuthentication(authentication.BaseAuthentication):
    """Authenticate ``Authorization: Token …`` or ``Bearer …`` by the token hash."""

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode("latin-1").lower() not in KEYWORDS:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "The Authorization header must be 'Token <token>' or "
                "'Bearer <token>', with no spaces in the token."
            )
        try:
            token = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(
                "The API token contains characters that no Meshline token has."
            ) from None
        return self.authenticate_token(token)

    def authenticate_token(self, token: str):
        api_token = (
            ApiToken.objects.select_related("user")
            .filter(key_hash=hash_token(token))
            .first()
        )
        if api_token is None:
            raise exceptions.AuthenticationFailed(
                "The API token is not valid: ask an admin for a new token."
            )
        if api_token.revoked_at is not None:
            logger.info("Revoked API token %s was presented", api_token.pk)
            raise exceptions.AuthenticationFailed(
                "The API token was revoked: ask an admin for a new token."
            )
        if not api_token.user.is_active:
            raise exceptions.AuthenticationFailed(
                "The API token's user is inactive: ask an admin to reactivate it."
            )
        touch(api_token)
        return api_token.user, api_token

    def authenticate_header(self, request):
        return 'Token realm="api"'


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """The token scheme in the OpenAPI schema."""

    target_class = TokenAuthentication
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from admin, as 'Bearer <token>' or "
            "'Token <token>'.",
        }


def touch(api_token: ApiToken) -> None:
    """Record the token's use, writing at most once a minute per token."""
    now = timezone.now()
    ApiToken.objects.filter(pk=api_token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_PRECISION)
    ).update(last_used_at=now)


def token_scopes(request) -> set[str] | None:
    """Return the scopes of the request's token, or None for a session login."""
    auth = getattr(request, "auth", None)
    if isinstance(auth, ApiToken):
        return set(auth.scopes or [])
    return None


class PolicyPermission(permissions.BasePermission):
    """Allow a request when its user may take ``action`` (and its token has the scope)."""

    action = "view"

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False
        if not roles.can(request.user, self.action):
            allowed = ", ".join(sorted(roles.POLICY[self.action]))
            self.message = f"This request needs one of these roles: {allowed}."
            return False
        scopes = token_scopes(request)
        needed = ACTION_SCOPES[self.action]
        if scopes is not None and needed not in scopes:
            self.message = (
                f"The API token lacks the '{needed}' scope: ask an admin for a "
                f"token with the {needed} scope."
            )
            return False
        return True


def policy_permission(action: str) -> type[PolicyPermission]:
    """Return a DRF permission class that checks one policy action."""
    if action not in roles.POLICY or action not in ACTION_SCOPES:
        raise LookupError(f"No policy action is named {action!r}.")
    return type(f"Policy_{action}", (PolicyPermission,), {"action": action})


class DefaultPolicy(PolicyPermission):
    """The fallback for API views that name no action: reading needs ``view``,
    any write needs ``edit_configuration``."""

    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            self.action = "view"
        else:
            self.action = "edit_configuration"
        return super().has_permission(request, view)
