import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.test.utils import override_settings

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "crm"
CASES = SHARED / "cases" / "sync-failures.jsonl"


def load_case(case_id: str) -> dict:
    for line in CASES.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        if case["id"] == case_id:
            return case
    raise LookupError(case_id)


@pytest.fixture(autouse=True, scope="session")
def fast_password_hashing():
    """Hash test passwords with MD5, which is fast and weak, in tests only.

    One hash with Django's default PBKDF2 (1,000,000 iterations) took 0.55 s
    on this machine, and the suite creates and logs in hundreds of users."""
    override = override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"])
    override.enable()
    yield
    override.disable()


@pytest.fixture(autouse=True)
def inline_pipeline(settings):
    """Run the pipeline and the dispatcher inline after each commit, with no
    backoff wait, so a test sees the final state right after a delivery."""
    settings.MESHLINE_SYNC_PIPELINE = True
    settings.MESHLINE_BACKOFF_BASE_SECONDS = 0


@pytest.fixture
def demo(db):
    from syncflows.demo import load_demo_configuration

    return load_demo_configuration()


def make_user(username: str, *roles: str) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", "pw")
    for role in roles:
        user.groups.add(Group.objects.get(name=role))
    return user


class Sender:
    """Posts deliveries to the inbound endpoint, signed as each CRM signs them."""

    def __init__(self, client, capture):
        self.client = client
        self.capture = capture

    def post(self, slug: str, body: bytes, **headers):
        # Tests run inside a transaction, so the pipeline's on-commit work is
        # captured and run here, as it would run after a real commit.
        with self.capture(execute=True):
            return self._post(slug, body, **headers)

    def _post(self, slug: str, body: bytes, **headers):
        return self.client.generic(
            "POST",
            f"/api/v1/inbound/{slug}/",
            body,
            content_type=headers.pop("content_type", "application/json"),
            **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()},
        )

    def hubspot(self, body, secret="demo-hubspot-client-secret", slug="hubspot", timestamp_ms=None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        ts = str(timestamp_ms or int(time.time() * 1000))
        uri = f"http://testserver/api/v1/inbound/{slug}/"
        source = b"POST" + uri.encode() + raw + ts.encode()
        signature = base64.b64encode(hmac.new(secret.encode(), source, hashlib.sha256).digest())
        return self.post(
            slug,
            raw,
            **{"X-HubSpot-Signature-v3": signature.decode(), "X-HubSpot-Request-Timestamp": ts},
        )

    def stripe_signed(self, slug, body, secret, header="X-Meshline-Signature", timestamp=None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        ts = str(timestamp or int(time.time()))
        digest = hmac.new(secret.encode(), ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
        return self.post(slug, raw, **{header: f"t={ts},v1={digest}"})

    def salesforce_cdc(self, body, secret="demo-salesforce-relay-secret"):
        return self.stripe_signed("salesforce_cdc", body, secret)

    def generic(self, body, secret="whsec_demo_generic_secret", slug="generic"):
        return self.stripe_signed(slug, body, secret)

    def pipedrive(self, body, password="demo-pipedrive-password", user="meshline"):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return self.post("pipedrive", raw, Authorization=f"Basic {token}")

    def outbound(self, xml: bytes):
        return self.post("salesforce_outbound", xml, content_type="text/xml; charset=utf-8")


@pytest.fixture
def send(client, django_capture_on_commit_callbacks):
    return Sender(client, django_capture_on_commit_callbacks)


@pytest.fixture(autouse=True)
def fresh_connector_cache():
    """Start each test without connectors cached by an earlier, rolled-back test."""
    from syncflows.services.connectors import forget_connectors

    forget_connectors()


@pytest.fixture(autouse=True)
def serial_dispatch(settings):
    """Dispatch in the test's own thread, so it sees the test's transaction."""
    settings.MESHLINE_DISPATCH_CONCURRENCY = 1


def pytest_collection_modifyitems(items):
    """Fail fast on a transactional test without serialized rollback.

    pytest-django runs transactional tests last. One without serialized
    rollback flushes with post_migrate, which re-creates the content types,
    and the next test with serialized rollback then restores its snapshot on
    top of them and fails on their unique constraint."""
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker and marker.kwargs.get("transaction") and not marker.kwargs.get(
            "serialized_rollback"
        ):
            raise pytest.UsageError(
                f"{item.nodeid}: use django_db(transaction=True, serialized_rollback=True)."
            )
