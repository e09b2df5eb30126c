"""The deferred receive path: replays, duplicates inside a batch, and the trace."""

import json

from django.contrib.auth.models import User
from django.utils import timezone
from django.utils.datastructures import CaseInsensitiveMapping

from syncflows.connectors import DeliveryRequest
from syncflows.demo import _cpq_quote, _hubspot_won
from syncflows.models import Connector, Delivery, InboundEvent, LedgerEntry, RecordChange
from syncflows.services.receive import normalise_delivery, receive, replay_delivery
from syncflows.services.trace import build_trace
from tests.conftest import FIXTURES


def stored_request(body: bytes) -> DeliveryRequest:
    return DeliveryRequest(
        method="POST",
        url="file://test/generic",
        headers=CaseInsensitiveMapping({"Content-Type": "application/json"}),
        body=body,
        received_at=timezone.now(),
        source="file",
        verified=True,
    )


def test_replay_after_normalise_quarantine(demo):
    """Replay a delivery that the worker quarantined after the endpoint stored it.

    The connector's settings change between the two steps. After the fix, the
    replay must turn the stored events into changes, not count them as
    duplicates of themselves."""
    connector = Connector.objects.get(slug="generic")
    body = json.dumps(_cpq_quote("006xx0000000077AAA", "FAKE-SKU-200")).encode()
    # No on-commit callback runs in this test, so the delivery stays stored
    # as a worker would find it.
    stored = receive(connector, stored_request(body), defer=True)
    assert stored.status == "accepted"
    delivery = Delivery.objects.get(pk=stored.delivery.pk)
    assert delivery.status == Delivery.Status.RECEIVED

    good_path = connector.settings["record_id_path"]
    connector.settings["record_id_path"] = "record.NoSuchField"
    connector.save()
    assert normalise_delivery(delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.QUARANTINED

    connector.settings["record_id_path"] = good_path
    connector.save()
    admin = User.objects.create_superuser("hb-admin", "hb-admin@example.com", "pw")
    result = replay_delivery(delivery, acting_user=admin)
    assert result.status == "accepted"
    changes = RecordChange.objects.filter(event__connector=connector)
    assert changes.count() == 1


def test_batch_duplicate_names_stored_event(demo, send):
    """A repeat of an event inside one HubSpot batch is logged as a duplicate
    of the event stored from the same batch, named by its id."""
    events = _hubspot_won(900000123, "1234.56", "EUR", 1718000000000)
    events.append(dict(events[3]))
    assert send.hubspot(json.dumps(events).encode()).status_code == 200
    duplicates = LedgerEntry.objects.filter(step=LedgerEntry.Step.DUPLICATE)
    assert duplicates.count() == 1
    stored = InboundEvent.objects.get(crm_event_id="9000001233")
    assert duplicates.get().message == (
        f"Duplicate of inbound event {stored.pk} (CRM event 9000001233); nothing new written."
    )


def test_trace_shows_whole_path(demo, send):
    """The trace of a deal that became an order lists every step, from the
    delivery's receipt to the ERP write."""
    body = (FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_bytes()
    assert send.pipedrive(json.loads(body)).status_code == 200
    steps = [entry["step"] for entry in build_trace("pipedrive:deal:9")["entries"]]
    for step in ("receive", "normalise", "match", "transform", "validate", "route", "enqueue", "execute"):
        assert step in steps, step
