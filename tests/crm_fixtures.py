"""Helpers for the connector tests: fixture files, requests and signatures."""

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path

from django.utils.datastructures import CaseInsensitiveMapping

from syncflows.connectors.base import DeliveryRequest

# The checkout and shared/ are siblings, in CI as in development.
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "crm"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def at_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def make_request(
    body: bytes,
    headers: dict | None = None,
    *,
    received_at: datetime | None = None,
    url: str = "https://meshline.example.com/api/v1/inbound/test/",
    method: str = "POST",
    verified: bool = False,
) -> DeliveryRequest:
    return DeliveryRequest(
        method=method,
        url=url,
        headers=CaseInsensitiveMapping(headers or {}),
        body=body,
        received_at=received_at or at_unix(1718000000),
        verified=verified,
    )


def stripe_signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def stripe_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={stripe_signature(secret, timestamp, body)}"


def basic_auth(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Basic {token}"
