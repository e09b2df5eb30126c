"""Credentials for CRM API calls: static tokens and OAuth 2.0 refresh.

A refreshed access token is kept in this process at once, so the next read
uses it. It is written to the ConnectorApiAccess row after the transaction
commits, so the read does not hold that row's lock while it runs.
"""

import json
import logging
import threading
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from meshline.env import env_str
from syncflows.connectors.base import ParseError, load_json
from syncflows.crm.errors import CrmError

logger = logging.getLogger(__name__)

# Refresh a token this long before it expires, so it does not expire mid-call.
EXPIRY_MARGIN = timedelta(seconds=60)

_tokens: dict = {}
_tokens_lock = threading.Lock()


def clear_token_cache() -> None:
    with _tokens_lock:
        _tokens.clear()


def load_credentials(access) -> dict:
    """Return the stored credentials of ``access``, else the JSON in its env var."""
    if access.credentials:
        return dict(access.credentials)
    if access.credentials_env:
        raw = env_str(access.credentials_env)
        if raw:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = None
            if isinstance(value, dict):
                return value
            raise CrmError(
                "auth_failed",
                f"The environment variable {access.credentials_env} of connector "
                f"{access.connector_id} is not a JSON object with the CRM credentials.",
            )
    raise CrmError(
        "auth_failed",
        f"Connector {access.connector_id} has no CRM API credentials: "
        "add them in admin.",
    )


class StaticToken:
    """A token that cannot be refreshed, such as a HubSpot private app token."""

    can_refresh = False

    def __init__(
        self, token: str, header: str = "Authorization", scheme: str = "Bearer"
    ):
        self.token = token
        self.header = header
        self.scheme = scheme

    def headers(self, session) -> dict:
        value = f"{self.scheme} {self.token}" if self.scheme else self.token
        return {self.header: value}

    def refresh(self, session) -> None:
        raise CrmError(
            "auth_failed", "The API token was rejected and cannot be refreshed."
        )


class OAuthToken:
    """An OAuth 2.0 access token refreshed with the refresh-token grant.

    ``client_auth`` is ``"body"`` (client id and secret as form fields, as
    HubSpot and Salesforce take them) or ``"basic"`` (HTTP basic, as
    Pipedrive takes them).
    """

    can_refresh = True

    def __init__(
        self, access, credentials: dict, token_url: str, client_auth: str = "body"
    ):
        self.access = access
        self.credentials = credentials
        self.token_url = token_url
        self.client_auth = client_auth
        self.on_refresh = None  # called with the token response, e.g. for instance_url
        self.refreshes = 0
        cached = _tokens.get(access.pk)
        if cached is not None:
            self.token, self.expires_at = cached
        else:
            stored = access.access_token
            self.token = stored.get("token") if isinstance(stored, dict) else None
            self.expires_at = access.token_expires_at

    def headers(self, session) -> dict:
        if not self.token or self._expiring():
            self.refresh(session)
        return {"Authorization": f"Bearer {self.token}"}

    def _expiring(self) -> bool:
        return (
            self.expires_at is not None
            and self.expires_at - EXPIRY_MARGIN <= timezone.now()
        )

    def refresh(self, session) -> None:
        self.refreshes += 1
        data = {
            "grant_type": "refresh_token",
            "refresh_token": self.credentials.get("refresh_token", ""),
        }
        auth = None
        if self.client_auth == "basic":
            auth = (
                self.credentials.get("client_id", ""),
                self.credentials.get("client_secret", ""),
            )
        else:
            data["client_id"] = self.credentials.get("client_id", "")
            data["client_secret"] = self.credentials.get("client_secret", "")
        try:
            response = session.post(
                self.token_url,
                data=data,
                auth=auth,
                timeout=self.access.timeout_seconds,
            )
        except Exception as exc:  # requests raises many kinds; all mean no new token
            raise CrmError(
                "crm_unavailable",
                f"The OAuth token endpoint of connector {self.access.connector_id} "
                f"could not be reached: {type(exc).__name__}.",
                transient=True,
            ) from exc
        body = _decode(response.content)
        if response.status_code >= 400 or not body.get("access_token"):
            raise CrmError(
                "auth_failed",
                f"The CRM refused to refresh the OAuth token of connector "
                f"{self.access.connector_id} (HTTP {response.status_code}, "
                f"{body.get('error', 'no error code')}): reconnect the app and "
                "store a new refresh token in admin.",
                status=response.status_code,
                crm_code=str(body.get("error", "")),
            )
        self._store(body)

    def _store(self, body: dict) -> None:
        self.token = body["access_token"]
        expires_in = body.get("expires_in")
        self.expires_at = (
            timezone.now() + timedelta(seconds=int(expires_in)) if expires_in else None
        )
        with _tokens_lock:
            _tokens[self.access.pk] = (self.token, self.expires_at)
        new_refresh = body.get("refresh_token")
        if new_refresh and new_refresh != self.credentials.get("refresh_token"):
            self.credentials["refresh_token"] = new_refresh
        if self.on_refresh is not None:
            self.on_refresh(body)
        logger.info(
            "Refreshed the OAuth token of connector %s", self.access.connector_id
        )
        access_id, token, expires_at = self.access.pk, self.token, self.expires_at
        # NOTE: a rotated refresh token is saved only when the credentials are
        # stored in the database; credentials from an env var cannot be updated.
        rotated = (
            dict(self.credentials) if new_refresh and self.access.credentials else None
        )
        transaction.on_commit(
            lambda: _save_token(access_id, token, expires_at, rotated)
        )


def _save_token(access_id, token, expires_at, credentials) -> None:
    from syncflows.models import ConnectorApiAccess

    values = {"access_token": {"token": token}, "token_expires_at": expires_at}
    if credentials is not None:
        values["credentials"] = credentials
    ConnectorApiAccess.objects.filter(pk=access_id).update(
        **values, updated_at=timezone.now()
    )


def _decode(content: bytes) -> dict:
    try:
        body = load_json(content) if content else {}
    except ParseError:
        return {}
    return body if isinstance(body, dict) else {}
