"""Deliveries with values that the database cannot store as sent.

A hostile or broken CRM can send each of these. A value that does not fit
its column is quarantined (422) with the delivery kept, where a failed
insert would return HTTP 500 and the CRM would retry it forever. A dedupe
key longer than its column is stored as a digest, so a resend is still
found as a duplicate.
"""

import json
import time

import pytest
from django.utils import timezone

from syncflows.demo import _hubspot_won, _pipedrive_won
from syncflows.models import Connector, Delivery, InboundEvent, LedgerEntry

pytestmark = pytest.mark.usefixtures("demo")


def hubspot_events(deal_id: int) -> list:
    return _hubspot_won(deal_id, "1234.56", "EUR", int(time.time() * 1000))


def pipedrive_body(deal_id: int) -> dict:
    return _pipedrive_won(deal_id, "1234.56", "EUR", timezone.now())


def assert_quarantined(response, code: str = "invalid_field") -> Delivery:
    assert response.status_code == 422, response.content
    assert response.json()["code"] == code
    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.QUARANTINED
    assert delivery.error_code == code
    assert InboundEvent.objects.count() == 0
    return delivery


def test_long_dedupe_key_resend_is_duplicate(send):
    events = hubspot_events(700001)
    for event in events:
        event["propertyName"] += "x" * 250
    first = send.hubspot(events)
    assert first.status_code == 200, first.content
    assert first.json()["events_accepted"] == 4

    # A CRM retry signs again with a new timestamp.
    resend = send.hubspot(events, timestamp_ms=int(time.time() * 1000) + 1)
    assert resend.status_code == 200, resend.content
    assert resend.json()["status"] == "duplicate"
    assert resend.json()["events_duplicate"] == 4
    assert InboundEvent.objects.count() == 4
    assert all(len(key) <= 200 for key in InboundEvent.objects.values_list("dedupe_key", flat=True))


def test_keys_sharing_prefix_both_stored(send):
    """Two events whose dedupe keys differ only after the 200th character
    are two events, not one event and its duplicate."""
    event = hubspot_events(700002)[0]
    first = dict(event, propertyName="p" * 250 + "A")
    second = dict(event, propertyName="p" * 250 + "B")
    response = send.hubspot([first, second])
    assert response.status_code == 200, response.content
    assert response.json()["events_accepted"] == 2
    assert InboundEvent.objects.count() == 2


def test_long_event_ids_each_stored(send):
    events = hubspot_events(700003)
    for index, event in enumerate(events):
        event["eventId"] = "9" * 300 + str(index)
    response = send.hubspot(events)
    assert response.status_code == 200, response.content
    assert response.json()["events_accepted"] == 4


def test_long_record_id_quarantined(send):
    events = hubspot_events(700004)
    for event in events:
        event["objectId"] = "7" * 250
    delivery = assert_quarantined(send.hubspot(events))
    assert "record id" in delivery.error
    assert "250 characters long" in delivery.error


def test_long_object_type_quarantined(send):
    body = pipedrive_body(700005)
    body["meta"]["object"] = "o" * 100
    delivery = assert_quarantined(send.pipedrive(body))
    assert "object type" in delivery.error


def test_long_record_key_quarantined(send):
    """The record key joins the namespace, object type and record id, and
    has a column of its own (300 characters)."""
    Connector.objects.filter(slug="pipedrive").update(namespace="n" * 50)
    body = pipedrive_body(700006)
    body["meta"]["object"] = "o" * 64
    body["meta"]["id"] = "8" * 200
    body["current"]["id"] = body["previous"]["id"] = "8" * 200
    delivery = assert_quarantined(send.pipedrive(body))
    assert "record key" in delivery.error


def test_nul_in_value_quarantined(send):
    body = pipedrive_body(700007)
    body["current"]["title"] = "FAKE\u0000Deal"
    raw = json.dumps(body).encode()
    delivery = assert_quarantined(send.pipedrive(raw))
    assert bytes(delivery.body) == raw
    assert "NUL" in delivery.error
    assert "current.title" in delivery.error
    assert LedgerEntry.objects.filter(step=LedgerEntry.Step.QUARANTINE).count() == 1


def test_nul_in_dedupe_key_quarantined(send):
    events = hubspot_events(700008)
    events[2]["propertyName"] = "deal\u0000name"
    delivery = assert_quarantined(send.hubspot(events))
    assert "index 2" in delivery.error


def test_lone_surrogate_quarantined(send):
    raw = json.dumps(hubspot_events(700009)).replace('"FAKE-Deal', '"\\ud800FAKE-Deal').encode()
    delivery = assert_quarantined(send.hubspot(raw))
    assert "surrogate" in delivery.error


def test_emoji_stored(send):
    """Characters outside the Basic Multilingual Plane arrive as surrogate
    pairs in JSON escapes and are ordinary text."""
    events = hubspot_events(700010)
    events[2]["propertyValue"] = "FAKE-Deal \U0001f680 Ünïcødé"
    raw = json.dumps(events).encode()
    assert b"\\ud83d\\ude80" in raw
    response = send.hubspot(raw)
    assert response.status_code == 200, response.content
    assert InboundEvent.objects.get(position=2).payload["propertyValue"] == events[2]["propertyValue"]
