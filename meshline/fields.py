"""A model field that keeps secrets encrypted at rest.

Values are encrypted with Fernet (AES-128-CBC with HMAC-SHA256) under a key
derived from ``MESHLINE_SECRETS_KEY``, or from ``SECRET_KEY`` when that is not
set. Rotating the key needs the old values re-saved; see the README.
"""

import base64
import functools
import hashlib
import json
import logging

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


logger = logging.getLogger(__name__)


class Unreadable:
    """A stored secret that the current key cannot decrypt."""

    def __init__(self, where: str):
        self.where = where

    def __bool__(self):
        return False

    def reveal(self):
        raise ImproperlyConfigured(
            f"The secret stored in {self.where} cannot be decrypted: MESHLINE_SECRETS_KEY "
            "or SECRET_KEY changed since it was saved. Enter the secret again in admin."
        )


def reveal(value):
    """Return a stored secret value, raising if it cannot be decrypted."""
    if isinstance(value, Unreadable):
        value.reveal()
    return value


def _fernet() -> Fernet:
    material = getattr(settings, "MESHLINE_SECRETS_KEY", None) or settings.SECRET_KEY
    return _fernet_for(material)


@functools.lru_cache(maxsize=4)
def _fernet_for(material: str) -> Fernet:
    digest = hashlib.sha256(("meshline-secrets:" + material).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


class EncryptedJSONField(models.TextField):
    """A JSON value (usually a list of secrets) stored as a Fernet token."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return None
        try:
            plain = _fernet().decrypt(value.encode())
        except InvalidToken:
            # Rows stay readable for pages that never use the secret; using it
            # raises with the reason (see Unreadable.reveal).
            logger.error("A stored secret in %s.%s cannot be decrypted", self.model.__name__, self.name)
            return Unreadable(f"{self.model.__name__}.{self.name}")
        return json.loads(plain)

    def to_python(self, value):
        if isinstance(value, str) and value and value[0] in "[{":
            return json.loads(value)
        return value

    def get_prep_value(self, value):
        if value is None:
            return None
        if isinstance(value, Unreadable):
            value.reveal()
        return _fernet().encrypt(json.dumps(value).encode()).decode()


class BulkJSONField(models.JSONField):
    """A JSONField for tables that the pipeline fills with bulk inserts.

    On PostgreSQL, Django 5.2 sends a multi-row insert as one array a column
    (``UNNEST``) unless a field has ``get_placeholder``. psycopg escapes a
    JSON document inside a text array character by character in Python,
    which took about a millisecond an event in the pipeline's profile. With a
    placeholder a row, each document is sent as its own parameter.
    """

    def get_placeholder(self, value, compiler, connection):
        return "%s"
