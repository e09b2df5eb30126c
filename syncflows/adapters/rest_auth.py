"""Credentials of the REST adapter: bearer, basic and OAuth2 client credentials.

Secrets are read only from environment variables, files or the destination's
encrypted credentials. Each auth object returns the secret values it has
loaded from ``secrets()``, so that the adapter can remove them from messages.
"""

import base64
import os
import threading
import time

from syncflows.adapters.base import AdapterError
from syncflows.adapters.rest_settings import config_error

# Keys that would put a secret in clear text in the settings.
SECRET_KEYS = ("token", "password", "client_secret", "secret", "access_token")
AUTH_TYPES = "bearer, basic, oauth2_client_credentials or none"


class SecretSource:
    """A secret in an environment variable, a file or the destination's credentials."""

    def __init__(self, slug: str, label: str, *, env=None, path=None, credentials=None):
        self.slug, self.label = slug, label
        self.env, self.path, self.credentials = env, path, credentials

    def read(self) -> str:
        if self.env:
            value = os.environ.get(self.env, "")
            where = f"environment variable {self.env}"
        elif self.path:
            value, where = self._read_file(), f"file {self.path}"
        else:
            value = (self.credentials or {}).get(self.label, "")
            where = "credentials"
        if not (isinstance(value, str) and value.strip()):
            message = (
                f"Destination {self.slug}: the {self.label} in its {where} "
                "is missing or empty."
            )
            raise AdapterError("auth_failed", message)
        return value.strip()

    def _read_file(self) -> str:
        try:
            with open(self.path, encoding="utf-8") as handle:
                return handle.read()
        except OSError as exc:
            message = (
                f"Destination {self.slug}: cannot read the {self.label} file "
                f"{self.path}: {exc.strerror}."
            )
            raise AdapterError("auth_failed", message) from None


def secret_source(slug: str, auth: dict, label: str, credentials) -> SecretSource:
    env, path = auth.get(f"{label}_env"), auth.get(f"{label}_file")
    if env and path:
        raise config_error(
            slug, f"auth.{label}_env", f"and auth.{label}_file are both set; keep one"
        )
    if not (env or path or (credentials or {}).get(label)):
        raise config_error(
            slug,
            "auth",
            f"needs {label}_env, {label}_file or a {label!r} entry "
            "in the destination's credentials",
        )
    return SecretSource(slug, label, env=env, path=path, credentials=credentials)


class NoAuth:
    def apply(self, headers: dict) -> None:
        pass

    def refresh(self) -> bool:
        return False

    def secrets(self) -> list[str]:
        return []


class StaticAuth:
    """Bearer or basic credentials; a refresh reads the secret again."""

    def __init__(self, source: SecretSource, username: str | None = None):
        self.source, self.username = source, username
        self._value = None

    def apply(self, headers: dict) -> None:
        if self._value is None:
            self._value = self.source.read()
        if self.username is None:
            headers["Authorization"] = f"Bearer {self._value}"
        else:
            pair = f"{self.username}:{self._value}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"

    def refresh(self) -> bool:
        previous, self._value = self._value, self.source.read()
        return self._value != previous

    def secrets(self) -> list[str]:
        return [self._value] if self._value else []


class OAuth2ClientCredentials:
    """Client-credentials tokens, cached until shortly before they expire."""

    def __init__(self, fetch, token_url, client_id, source, scope, client_auth):
        self.fetch = fetch  # callable(url, form, basic_auth) -> token document
        self.token_url, self.client_id, self.source = token_url, client_id, source
        self.scope, self.client_auth = scope, client_auth
        self.clock = time.monotonic
        self._token = None
        self._expires_at = None
        self._secret = None
        self._lock = threading.Lock()

    def apply(self, headers: dict) -> None:
        with self._lock:
            expired = self._expires_at is not None and self.clock() >= self._expires_at
            if self._token is None or expired:
                self._fetch_token()
            headers["Authorization"] = f"Bearer {self._token}"

    def refresh(self) -> bool:
        with self._lock:
            self._fetch_token()
        return True

    def secrets(self) -> list[str]:
        return [value for value in (self._secret, self._token) if value]

    def _fetch_token(self) -> None:
        self._secret = self.source.read()
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        basic = None
        if self.client_auth == "basic":
            basic = (self.client_id, self._secret)
        else:
            form.update(client_id=self.client_id, client_secret=self._secret)
        document = self.fetch(self.token_url, form, basic)
        self._token = str(document["access_token"])
        self._expires_at = None
        try:
            seconds = float(document.get("expires_in"))
        except (TypeError, ValueError):
            return  # no usable lifetime, so the token is kept until a 401
        # Renew early, by a tenth of the lifetime and at most 30 s, so that a
        # token rarely expires while a request is in flight.
        self._expires_at = self.clock() + seconds - min(30.0, seconds / 10)


def build_auth(slug: str, auth, credentials, base_url: str, fetch):
    """Build the auth object for ``settings.auth``; ``fetch`` posts token requests."""
    if auth is None or auth == {"type": "none"}:
        return NoAuth()
    if not isinstance(auth, dict):
        raise config_error(slug, "auth", "must be an object with a type")
    for name in SECRET_KEYS:
        if name in auth:
            raise config_error(
                slug,
                f"auth.{name}",
                "contains a secret in clear text; name an environment variable "
                f"with {name}_env or a file with {name}_file, or store it in the "
                "destination's credentials",
            )
    kind = auth.get("type")
    if kind == "bearer":
        return StaticAuth(secret_source(slug, auth, "token", credentials))
    if kind == "basic":
        return _build_basic(slug, auth, credentials)
    if kind == "oauth2_client_credentials":
        return _build_oauth2(slug, auth, credentials, base_url, fetch)
    raise config_error(slug, "auth.type", f"must be {AUTH_TYPES}")


def _build_basic(slug: str, auth: dict, credentials) -> "StaticAuth":
    if not isinstance(auth.get("username"), str) or not auth["username"]:
        raise config_error(slug, "auth.username", "is missing")
    source = secret_source(slug, auth, "password", credentials)
    return StaticAuth(source, username=auth["username"])


def _build_oauth2(
    slug, auth, credentials, base_url, fetch
) -> "OAuth2ClientCredentials":
    token_url = auth.get("token_url")
    if isinstance(token_url, str) and token_url.startswith("/"):
        token_url = base_url + token_url
    if not (
        isinstance(token_url, str) and token_url.startswith(("http://", "https://"))
    ):
        raise config_error(slug, "auth.token_url", "must be an http(s) URL or a path")
    if not auth.get("client_id"):
        raise config_error(slug, "auth.client_id", "is missing")
    client_auth = auth.get("client_auth", "basic")
    if client_auth not in ("basic", "post"):
        raise config_error(slug, "auth.client_auth", "must be basic or post")
    return OAuth2ClientCredentials(
        fetch,
        token_url,
        auth["client_id"],
        secret_source(slug, auth, "client_secret", credentials),
        auth.get("scope"),
        client_auth,
    )
