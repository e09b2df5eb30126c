"""The inbound endpoint's answers to bad input, and replay of kept deliveries."""

import json

import pytest

from syncflows.models import Connector, Delivery, InboundEvent, LedgerEntry, SandboxOrder
from syncflows.services.receive import replay_delivery
from tests.conftest import FIXTURES, make_user

pytestmark = pytest.mark.django_db


def test_unknown_connector_is_404_json(demo, send):
    response = send.post("nope", b"{}")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_connector"
    assert "nope" in response.json()["message"]
    assert Delivery.objects.count() == 0


def test_get_is_not_allowed(demo, client):
    assert client.get("/api/v1/inbound/hubspot/").status_code == 405


def test_oversized_body_is_413(demo, send, settings):
    settings.MESHLINE_MAX_DELIVERY_BYTES = 2048
    response = send.hubspot(b"[" + b" " * 3000 + b"]")
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert "2048" in response.json()["message"]


def test_wrong_signature_is_kept_and_replayable(
    demo, send, django_capture_on_commit_callbacks
):
    body = (FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes()
    response = send.hubspot(body, secret="not-the-secret")
    assert response.status_code == 401
    assert "X-HubSpot-Signature-v3" in response.json()["message"]
    delivery = Delivery.objects.get()
    assert delivery.status == "rejected"
    assert bytes(delivery.body) == body
    assert SandboxOrder.objects.count() == 0

    # The CRM signed with a secret the connector did not hold yet: an admin
    # adds it and replays. Replay checks the signature again, against the
    # time the delivery was first received.
    connector = Connector.objects.get(slug="hubspot")
    connector.secrets = ["not-the-secret", *connector.secret_list]
    connector.save()
    triage = make_user("tess", "Triage Lead")
    with django_capture_on_commit_callbacks(execute=True):
        result = replay_delivery(delivery, acting_user=triage)
    assert result.status == "accepted"
    assert SandboxOrder.objects.count() == 1
    delivery.refresh_from_db()
    assert delivery.status == "replayed"


def test_missing_signature_is_401(demo, send):
    response = send.post("hubspot", b"[]")
    assert response.status_code == 401
    assert response.json()["code"]


def test_malformed_json_is_quarantined(demo, send):
    response = send.pipedrive(b'{"meta": {"action": "updated",')
    assert response.status_code == 422
    payload = response.json()
    assert payload["code"] == "invalid_json"
    assert "quarantine" in payload["message"]
    delivery = Delivery.objects.get()
    assert delivery.status == "quarantined"
    assert delivery.error_code == "invalid_json"
    assert InboundEvent.objects.count() == 0
    assert LedgerEntry.objects.filter(step="quarantine").count() == 1


def test_quarantined_delivery_replays_after_fix(demo, send, django_capture_on_commit_callbacks):
    # A Pipedrive body that the parser cannot read: meta.object is missing.
    broken = json.loads((FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_text())
    del broken["meta"]["object"]
    response = send.pipedrive(json.dumps(broken).encode())
    assert response.status_code == 422
    delivery = Delivery.objects.get()
    viewer = make_user("vic", "Viewer")
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        replay_delivery(delivery, acting_user=viewer)

    # After a fix the stored body is fixed by a new delivery; a replay of the
    # unchanged body is quarantined again, never dropped.
    finance = make_user("fay", "Finance")
    with django_capture_on_commit_callbacks(execute=True):
        result = replay_delivery(delivery, acting_user=finance)
    assert result.status == "quarantined"
    assert Delivery.objects.filter(status="quarantined").count() == 2


def test_xml_rejected_for_wrong_org(demo, send):
    xml = (FIXTURES / "salesforce_outbound_message_opportunity.xml").read_bytes()
    response = send.outbound(xml.replace(b"00Dxx0000000001EAA", b"00Dxx0000000009EAA"))
    assert response.status_code == 403
    assert b"Fault" in response.content
    assert Delivery.objects.get().status == "rejected"


def test_unreadable_secret_keeps_delivery(demo, send, settings):
    body = (FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes()
    settings.SECRET_KEY = "a-different-key-than-the-one-that-encrypted-the-secrets"
    response = send.hubspot(body)
    assert response.status_code == 503
    assert response.json()["code"] == "secret_unreadable"
    assert "Enter the secret again" in response.json()["message"]
    assert Delivery.objects.get().status == "rejected"


def test_endpoint_reads_a_saved_connector_again(demo, send):
    from syncflows.services.connectors import active_connector

    body = json.loads((FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_text())
    assert send.pipedrive(body).status_code == 200
    cached = active_connector("pipedrive")
    assert active_connector("pipedrive") is cached
    connector = Connector.objects.get(slug="pipedrive")
    connector.is_active = False
    connector.save()
    response = send.pipedrive(body)
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_connector"
