"""A full demo run leaks no secret and no personal name into logs or stores.

The run sends a signed delivery for every connector kind, a delivery with a
wrong signature, demo deliveries that fail into exception cases, a retry of a
case, and opens the admin pages of connectors, destinations and API tokens,
with every logger at DEBUG. Then the captured logs, every stored header,
payload, ledger row and case, and the HTML of those pages are searched for
each secret used.
"""

import base64
import json
import logging

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from exceptions.models import ExceptionCase
from meshline.models import ApiToken
from syncflows.demo import DEMO_SECRETS, load_demo_deliveries
from syncflows.models import (
    Connector,
    Delivery,
    Destination,
    InboundEvent,
    LedgerEntry,
    RecordChange,
)
from tests.conftest import FIXTURES

pytestmark = pytest.mark.django_db

DESTINATION_SECRET = "erp-password-7f3a9c"
PERSONAL_VALUES = [
    "Test Person",
    "Owner Name",
    "example-company+deal9@pipedrivemail.example",
]


def fixture(name) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def demo_run(demo, send, client, caplog):
    caplog.set_level(logging.DEBUG)
    destination = Destination.objects.get(slug="sandbox")
    destination.credentials = [DESTINATION_SECRET]
    destination.save()
    admin = User.objects.create_superuser("root", "root@example.com", "pw")

    send.hubspot(fixture("hubspot_webhook_v3_deal_events.json"))
    send.salesforce_cdc(fixture("salesforce_cdc_opportunity_create.json"))
    send.outbound(fixture("salesforce_outbound_message_opportunity.xml"))
    send.pipedrive(json.loads(fixture("pipedrive_webhook_v1_updated_deal.json")))
    send.generic(fixture("salesforce_cpq_quote_discounted_lines_SYNTHETIC.json"))
    send.hubspot(b"[]", secret="not-the-secret")
    send.pipedrive({"meta": {}}, password="wrong-password")
    with send.capture(execute=True):
        load_demo_deliveries(12)

    client.force_login(admin)
    case = ExceptionCase.objects.order_by("id").first()
    assert case is not None
    with send.capture(execute=True):
        client.post(reverse("exceptions:case-retry", args=[case.pk]))
    token_page = client.post(
        "/admin/meshline/apitoken/add/",
        {"user": admin.pk, "name": "scan", "scopes": ["read"]},
    )
    token = token_page.context["token"]
    pages = [
        client.get(f"/admin/syncflows/connector/{connector.pk}/change/")
        for connector in Connector.objects.all()
    ]
    pages.append(client.get(f"/admin/syncflows/destination/{destination.pk}/change/"))
    pages.append(client.get("/admin/syncflows/connector/"))
    pages.append(client.get("/admin/meshline/apitoken/"))
    pages.append(
        client.get(f"/admin/meshline/apitoken/{ApiToken.objects.get().pk}/change/")
    )
    pages.append(
        client.get("/api/v1/commands/", HTTP_AUTHORIZATION="Token wrong-token")
    )
    pages.append(client.get("/no-such-page/"))
    html = "\n".join(page.content.decode("utf-8", "replace") for page in pages)
    return {"token": token, "html": html, "logs": caplog.text}


def secrets(token) -> list[str]:
    values = [secret for secret in DEMO_SECRETS.values() if secret]
    values += [DESTINATION_SECRET, token, "not-the-secret", "wrong-password"]
    password = DEMO_SECRETS["pipedrive"]
    values.append(base64.b64encode(f"meshline:{password}".encode()).decode())
    return values


def stored_text() -> str:
    parts = [json.dumps(h) for h in Delivery.objects.values_list("headers", flat=True)]
    parts += [
        json.dumps(p) for p in InboundEvent.objects.values_list("payload", flat=True)
    ]
    for entry in LedgerEntry.objects.all():
        parts += [
            entry.message,
            json.dumps(entry.payload_before),
            json.dumps(entry.payload_after),
        ]
    for case in ExceptionCase.objects.all():
        parts += [case.message, json.dumps(case.detail)]
    parts += [json.dumps(c.state) for c in RecordChange.objects.all()]
    return "\n".join(parts)


def test_run_produced_every_kind(demo_run):
    kinds = set(Delivery.objects.values_list("connector__kind", flat=True))
    assert kinds == {
        "hubspot",
        "salesforce_cdc",
        "salesforce_outbound",
        "pipedrive",
        "generic",
    }
    assert Delivery.objects.filter(status=Delivery.Status.REJECTED).count() == 2
    assert ExceptionCase.objects.exists()


def test_no_secret_in_logs(demo_run):
    leaked = [s for s in secrets(demo_run["token"]) if s in demo_run["logs"]]
    assert leaked == []


def test_no_secret_stored(demo_run):
    text = stored_text()
    leaked = [s for s in secrets(demo_run["token"]) if s in text]
    assert leaked == []


def test_no_secret_in_admin_pages(demo_run):
    leaked = [s for s in secrets(demo_run["token"]) if s in demo_run["html"]]
    assert leaked == []


def test_logs_carry_no_personal_values(demo_run):
    leaked = [value for value in PERSONAL_VALUES if value in demo_run["logs"]]
    assert leaked == []


def test_logs_carry_ids(demo_run):
    assert "Delivery " in demo_run["logs"]
    assert "Command " in demo_run["logs"]
