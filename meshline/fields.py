"""A model field that keeps secrets encrypted at rest.

Values are encrypted with Fernet (AES-128-CBC with HMAC-SHA256) under a key
derived from ``MESHLINE_SECRETS_KEY``, or from ``SECRET_KEY`` when that is not
set. Rotating the key needs the old values re-saved; see the README.
"""

import base64
import hashlib
import json

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


def _fernet() -> Fernet:
    material = getattr(settings, "MESHLINE_SECRETS_KEY", None) or settings.SECRET_KEY
    digest = hashlib.sha256(("meshline-secrets:" + material).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


class EncryptedJSONField(models.TextField):
    """A JSON value (usually a list of secrets) stored as a Fernet token."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return None
        try:
            plain = _fernet().decrypt(value.encode())
        except InvalidToken as exc:
            raise ImproperlyConfigured(
                f"A stored secret in {self.model.__name__}.{self.name} cannot be "
                "decrypted: MESHLINE_SECRETS_KEY or SECRET_KEY changed since it was saved."
            ) from exc
        return json.loads(plain)

    def to_python(self, value):
        if isinstance(value, str) and value and value[0] in "[{":
            return json.loads(value)
        return value

    def get_prep_value(self, value):
        if value is None:
            return None
        return _fernet().encrypt(json.dumps(value).encode()).decode()
