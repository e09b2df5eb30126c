"""Hostile bodies through the real inbound endpoint of every connector kind.

Each body is signed as the CRM signs it, so it passes verification and
reaches the parser. No answer may be a 5xx; a body the parser cannot read is
kept whole in quarantine (422) and writes no event, record or change; a body
over the size limit is answered 413 and stored nowhere.
"""

import json

import pytest
from django.conf import settings
from hypothesis import HealthCheck, given, strategies as st
from hypothesis import settings as hypothesis_settings

from syncflows.models import Delivery, InboundEvent, RecordChange, SourceRecord
from tests.conftest import FIXTURES

pytestmark = pytest.mark.django_db

KINDS = ["hubspot", "salesforce_cdc", "salesforce_outbound", "pipedrive", "generic"]
FIXTURE_FILES = {
    "hubspot": "hubspot_webhook_v3_deal_events.json",
    "salesforce_cdc": "salesforce_cdc_opportunity_create.json",
    "salesforce_outbound": "salesforce_outbound_message_opportunity.xml",
    "pipedrive": "pipedrive_webhook_v1_updated_deal.json",
    "generic": "salesforce_cpq_quote_discounted_lines_SYNTHETIC.json",
}


def post(send, kind, body: bytes):
    if kind == "hubspot":
        return send.hubspot(body)
    if kind == "salesforce_cdc":
        return send.salesforce_cdc(body)
    if kind == "salesforce_outbound":
        return send.outbound(body)
    if kind == "pipedrive":
        return send.pipedrive(body)
    return send.generic(body)


def counts():
    return (
        InboundEvent.objects.count(),
        RecordChange.objects.count(),
        SourceRecord.objects.count(),
    )


def fixture_body(kind) -> bytes:
    return (FIXTURES / FIXTURE_FILES[kind]).read_bytes()


def nested(depth: int, kind: str) -> bytes:
    if kind == "salesforce_outbound":
        return b"<a>" * depth + b"</a>" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def hostile_bodies(kind):
    good = fixture_body(kind)
    yield "empty", b""
    yield "truncated", good[: len(good) // 2]
    yield "malformed", good.replace(b"{", b"(", 3).replace(b"<", b"[", 3)
    yield "nested", nested(100_000, kind)
    yield "utf16", good.decode("utf-8").encode("utf-16")
    yield "latin1_bytes", b'{"name": "Caf\xe9 \xff\xfe"}'
    yield "nul_bytes", b"\x00" * 64
    yield (
        "wrong_shape",
        b'"just a string"' if kind != "salesforce_outbound" else b"<x/>",
    )
    yield "number_overflow", b'{"amount": 1e999999, "id": ' + b"9" * 5000 + b"}"


# An Outbound Message without basic auth proves its origin only by the
# OrganizationId inside the body: a body broken before that id is rejected as
# unauthenticated, one broken after it is authentic and quarantined.
BODY_AUTHENTICATED = {"salesforce_outbound"}

CASES = [(kind, name) for kind in KINDS for name, _body in hostile_bodies(kind)]


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_hostile_body_quarantined(demo, send, kind, name):
    body = dict(hostile_bodies(kind))[name]
    before = counts()
    deliveries = Delivery.objects.count()
    response = post(send, kind, body)
    assert response.status_code < 500
    assert counts() == before
    assert Delivery.objects.count() == deliveries + 1
    stored = Delivery.objects.order_by("-id").first()
    assert bytes(stored.body) == body
    if kind in BODY_AUTHENTICATED and response.status_code != 422:
        assert response.status_code in (400, 403), response.content[:300]
        assert stored.status == Delivery.Status.REJECTED
    else:
        assert response.status_code == 422, response.content[:300]
        assert stored.status == Delivery.Status.QUARANTINED


@pytest.mark.parametrize("kind", KINDS)
def test_huge_body_rejected_unstored(demo, send, kind):
    limit = settings.MESHLINE_MAX_DELIVERY_BYTES
    body = b'{"pad": "' + b"x" * limit + b'"}'
    response = post(send, kind, body)
    assert response.status_code == 413
    assert Delivery.objects.count() == 0
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_fixture_still_accepted(demo, send, kind):
    response = post(send, kind, fixture_body(kind))
    assert response.status_code == 200, response.content[:300]
    assert InboundEvent.objects.count() >= 1


@pytest.mark.parametrize("kind", KINDS)
@hypothesis_settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(
        st.binary(min_size=1, max_size=512),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_random_body_never_fails(demo, send, kind, body):
    before = counts()
    response = post(send, kind, body)
    assert response.status_code < 500
    if response.status_code in (400, 403, 422):
        assert counts() == before
    else:
        assert response.status_code in (200, 409), response.content[:300]
