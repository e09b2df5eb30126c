"""The deferred receive path: replays, duplicates inside a batch, a broker
failure and the trace."""

import base64
import json
import logging

import redis
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.datastructures import CaseInsensitiveMapping
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from syncflows.connectors import DeliveryRequest
from syncflows.demo import _cpq_quote, _hubspot_won
from syncflows.models import Connector, Delivery, InboundEvent, LedgerEntry, RecordChange
from syncflows.services.connectors import active_connector
from syncflows.services.receive import normalise_delivery, receive, replay_delivery
from syncflows.services.trace import build_trace
from syncflows.tasks import normalise_deliveries_task
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


def post_pipedrive(client, body: bytes):
    token = base64.b64encode(b"meshline:demo-pipedrive-password").decode()
    return client.generic(
        "POST",
        "/api/v1/inbound/pipedrive/",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Basic {token}",
    )


def test_new_delivery_one_insert(demo, client, settings):
    """On PostgreSQL a delivery of new events costs two statements: one takes
    the delivery id and checks for stored events, one insert writes the
    delivery, its event, its ledger row and its django-q2 task row."""
    settings.MESHLINE_SYNC_PIPELINE = False
    active_connector("pipedrive")  # cached, as on a warm server
    body = (FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_bytes()
    with CaptureQueriesContext(connection) as queries:
        response = post_pipedrive(client, body)
    assert response.status_code == 200, response.content
    statements = [
        query["sql"] for query in queries.captured_queries
        if not query["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))
    ]
    assert len(statements) == 2, statements
    assert statements[0].startswith("SELECT nextval(")
    assert statements[1].startswith("WITH ")

    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.RECEIVED
    assert bytes(delivery.body) == body
    assert "Authorization" not in delivery.headers
    event = InboundEvent.objects.get()
    assert (event.delivery_id, event.object_type, event.record_id) == (delivery.pk, "deal", "9")
    receipt = LedgerEntry.objects.get()
    assert receipt.step == LedgerEntry.Step.RECEIVE
    assert receipt.delivery_id == delivery.pk
    assert receipt.message == f"Delivery {delivery.pk} accepted with 1 new event(s) and 0 duplicate(s)."
    task = SignedPackage.loads(OrmQ.objects.get().payload)
    assert task["func"] == "syncflows.tasks.normalise_deliveries_task"
    assert task["args"] == ([delivery.pk],)

    settings.MESHLINE_SYNC_PIPELINE = True
    normalise_deliveries_task([delivery.pk])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.ACCEPTED
    assert RecordChange.objects.get().event_id == event.pk


def test_concurrent_event_becomes_duplicate(demo, client, settings, monkeypatch):
    """A concurrent receiver stores the same event between the check and the
    insert. The insert then writes nothing, and the general path records the
    delivery as a duplicate of the other receiver's event."""
    from syncflows.services import receive as receiving

    body = (FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_bytes()
    real_insert = receiving.insert_together

    def other_receiver_first(groups):
        monkeypatch.setattr(receiving, "insert_together", real_insert)
        assert post_pipedrive(client, body).status_code == 200
        real_insert(groups)

    monkeypatch.setattr(receiving, "insert_together", other_receiver_first)
    response = post_pipedrive(client, body)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "duplicate"
    stored = InboundEvent.objects.get()
    assert Delivery.objects.get().pk == stored.delivery_id
    duplicate = LedgerEntry.objects.get(step=LedgerEntry.Step.DUPLICATE)
    assert duplicate.message.startswith(f"Duplicate of inbound event {stored.pk} ")
    assert LedgerEntry.objects.filter(step=LedgerEntry.Step.RECEIVE).count() == 1


def test_broker_down_after_store_accepted(demo, send, settings, monkeypatch, caplog):
    """On the Redis broker the task is sent after the delivery is committed.
    When Redis is unreachable the delivery is still stored, so the CRM gets
    200 and the minute sweep normalises the delivery later."""
    from django_q import tasks as django_q_tasks
    from django_q.conf import Conf

    settings.MESHLINE_SYNC_PIPELINE = False
    settings.Q_CLUSTER = {key: value for key, value in settings.Q_CLUSTER.items() if key != "orm"}
    monkeypatch.setattr(Conf, "ORM", None)

    def unreachable(*args, **kwargs):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(django_q_tasks, "async_task", unreachable)
    caplog.set_level(logging.ERROR, logger="syncflows.tasks")

    body = (FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_bytes()
    response = send.pipedrive(json.loads(body))

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "accepted"
    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.RECEIVED
    assert InboundEvent.objects.get().delivery_id == delivery.pk
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"[{delivery.pk}]" in message and "sweep" in message for message in messages), messages


def test_failed_delivery_quarantined_others_applied(db, settings):
    """A stored delivery whose events no longer fit the database is
    quarantined, and the other deliveries of the same task are applied.

    The namespace grows after the delivery is stored, so its record key of
    50 + 64 + 200 characters and two colons overflows the 300 of its column."""
    connector = Connector.objects.create(
        slug="relay",
        name="Relay",
        kind="generic",
        namespace="relay",
        default_currency="EUR",
        settings={"object_type": "o" * 64, "record_id_path": "id"},
    )
    settings.MESHLINE_SYNC_PIPELINE = False
    long_id = receive(connector, stored_request(json.dumps({"id": "r" * 200}).encode()), defer=True)
    short_id = receive(connector, stored_request(b'{"id": "short"}'), defer=True)
    assert long_id.status == "accepted"
    assert short_id.status == "accepted"
    connector.namespace = "n" * 50
    connector.save()

    settings.MESHLINE_SYNC_PIPELINE = True
    normalise_deliveries_task([long_id.delivery.pk, short_id.delivery.pk])
    failed = Delivery.objects.get(pk=long_id.delivery.pk)
    assert failed.status == Delivery.Status.QUARANTINED
    assert failed.error_code == "normalise_failed"
    assert failed.error.startswith("Applying the events to their records failed (DataError: ")
    assert not failed.events.exists()
    quarantine = LedgerEntry.objects.get(step=LedgerEntry.Step.QUARANTINE)
    assert quarantine.delivery_id == failed.pk
    applied = Delivery.objects.get(pk=short_id.delivery.pk)
    assert applied.status == Delivery.Status.ACCEPTED
    change = RecordChange.objects.get()
    assert change.event.delivery_id == applied.pk
