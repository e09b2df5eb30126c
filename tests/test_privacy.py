"""Payload retention and data-subject export and erasure."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone

from meshline.models import UsedSignature
from meshline.roles import FINANCE
from reporting.privacy import REMOVED, Redactor, run_retention
from syncflows.models import (
    Command,
    Delivery,
    InboundEvent,
    LedgerEntry,
    RecordChange,
    SourceRecord,
)
from tests.conftest import FIXTURES, make_user

pytestmark = pytest.mark.django_db

PIPEDRIVE = json.loads(
    (FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_text()
)
PERSONAL = ["Test Person", "Owner Name", "example-company+deal9@pipedrivemail.example"]


@pytest.fixture
def deal(demo, send):
    response = send.pipedrive(PIPEDRIVE)
    assert response.status_code == 200
    assert Command.objects.get().state == Command.State.SUCCEEDED
    return SourceRecord.objects.get()


def stored_text() -> str:
    """Every payload column that retention and erasure clean, as one string."""
    parts = [
        bytes(body).decode() for body in Delivery.objects.values_list("body", flat=True)
    ]
    parts += [
        json.dumps(p) for p in InboundEvent.objects.values_list("payload", flat=True)
    ]
    for change in RecordChange.objects.all():
        parts += [json.dumps(change.state), json.dumps(change.previous)]
    for entry in LedgerEntry.objects.all():
        parts += [json.dumps(entry.payload_before), json.dumps(entry.payload_after)]
    for command in Command.objects.all():
        parts += [json.dumps(command.payload), json.dumps(command.result)]
    return "\n".join(parts)


def later(days=181):
    return timezone.now() + timedelta(days=days)


def test_redactor_keeps_amounts_and_ids():
    redactor = Redactor("pipedrive")
    data = redactor.redact(
        {"id": 9, "value": "1234.56", "person_name": "Test Person", "person_id": 101}
    )
    assert data == {
        "id": 9,
        "value": "1234.56",
        "person_name": REMOVED,
        "person_id": 101,
    }
    assert redactor.removed == 1


def test_redactor_hubspot_property_pair():
    redactor = Redactor("hubspot")
    event = {"objectId": 5, "propertyName": "email", "propertyValue": "a@example.com"}
    assert redactor.redact(event)["propertyValue"] == REMOVED
    amount = {"objectId": 5, "propertyName": "amount", "propertyValue": "10.00"}
    assert redactor.redact(amount)["propertyValue"] == "10.00"


def test_redactor_generic_patterns():
    redactor = Redactor("generic")
    data = redactor.redact(
        {"Billing_Street": "1 Road", "contactPhone": "+44 1", "qty": 2}
    )
    assert data == {"Billing_Street": REMOVED, "contactPhone": REMOVED, "qty": 2}


def test_redactor_empties_non_json_body():
    redactor = Redactor("salesforce_outbound")
    assert redactor.redact_body(b"<soapenv:Envelope>Name</soapenv:Envelope>") == b""
    assert redactor.removed == 1


def test_retention_keeps_recent_payloads(deal):
    report = run_retention()
    assert report["deliveries"] == {"rows": 0, "values": 0}
    assert report["ledger"] == {"rows": 0, "values": 0}
    text = stored_text()
    for value in PERSONAL:
        assert value in text


def test_retention_removes_old_personal_fields(deal):
    report = run_retention(now=later())
    assert report["deliveries"]["rows"] == 1
    assert report["events"]["rows"] == 1
    assert report["changes"]["rows"] == 1
    assert report["ledger"]["rows"] >= 1
    text = stored_text()
    for value in PERSONAL:
        assert value not in text
    body = json.loads(bytes(Delivery.objects.get().body))
    assert body["current"]["value"] == 1234.56
    assert body["current"]["id"] == 9
    assert body["current"]["status"] == "won"
    assert body["current"]["person_name"] == REMOVED
    command = Command.objects.get()
    assert command.payload["total"] == Command.objects.get().payload["total"]
    assert command.state == Command.State.SUCCEEDED
    assert command.erp_document_number


def test_retention_second_run_removes_nothing(deal):
    run_retention(now=later())
    again = run_retention(now=later())
    assert all(item["rows"] == 0 for name, item in again.items())


def test_retention_dry_run_changes_nothing(deal):
    before = stored_text()
    report = run_retention(now=later(), dry_run=True)
    assert report["deliveries"]["rows"] == 1
    assert stored_text() == before


def test_retention_purges_old_signatures(deal):
    UsedSignature.objects.create(
        connector_id=1, digest="a" * 64, seen_at=timezone.now() - timedelta(hours=1)
    )
    UsedSignature.objects.create(connector_id=1, digest="b" * 64)
    report = run_retention()
    assert report["used_signatures"]["rows"] == 1
    assert list(UsedSignature.objects.values_list("digest", flat=True)) == ["b" * 64]


def test_retention_command_prints_counts(deal, settings):
    settings.MESHLINE_RETENTION_DAYS = 1
    out = StringIO()
    call_command("retention", "--dry-run", stdout=out)
    assert "Retention period: 1 days." in out.getvalue()
    assert "deliveries: 0 row(s), 0 value(s) would be removed" in out.getvalue()


def test_retention_command_checks_policy(deal):
    make_user("fay", FINANCE)
    with pytest.raises(CommandError, match="needs one of these roles: Admin"):
        call_command("retention", "--user", "fay")


def test_retention_schedule_installed():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(name="meshline-daily-retention")
    assert schedule.func == "reporting.privacy.retention_task"
    assert schedule.schedule_type == Schedule.DAILY


def test_subject_export_holds_everything(deal, tmp_path):
    User.objects.create_superuser("root", "root@example.com", "pw")
    target = tmp_path / "export.json"
    call_command("subject_export", "9", "--user", "root", "--output", str(target))
    data = json.loads(target.read_text())
    assert [r["record_key"] for r in data["records"]] == [deal.record_key]
    record = data["records"][0]
    assert len(record["deliveries"]) == 1
    assert "Test Person" in record["deliveries"][0]["body"]
    assert len(record["events"]) == 1
    assert len(record["commands"]) == 1
    assert len(record["ledger"]) >= 5
    assert record["record"]["state"]["person_name"] == "Test Person"


def test_subject_erase_removes_personal_fields(deal):
    User.objects.create_superuser("root", "root@example.com", "pw")
    out = StringIO()
    call_command(
        "subject_erase", deal.record_key, "--user", "root", "--yes", stdout=out
    )
    assert "deliveries: 1 row(s)" in out.getvalue()
    text = stored_text()
    for value in PERSONAL:
        assert value not in text
    deal.refresh_from_db()
    assert deal.state["person_name"] == REMOVED
    assert str(deal.state["value"]) == "1234.56"
    command = Command.objects.get()
    assert command.state == Command.State.SUCCEEDED
    erased = LedgerEntry.objects.filter(message__contains="erased the personal fields")
    assert erased.count() == 1


def test_subject_erase_needs_yes_and_admin(deal):
    make_user("fay", FINANCE)
    with pytest.raises(CommandError, match="pass --yes"):
        call_command("subject_erase", "9", "--user", "fay")
    with pytest.raises(CommandError, match="needs one of these roles: Admin"):
        call_command("subject_erase", "9", "--user", "fay", "--yes")
    assert "Test Person" in stored_text()


def test_subject_unknown_record(deal):
    User.objects.create_superuser("root", "root@example.com", "pw")
    with pytest.raises(CommandError, match="No CRM record matches"):
        call_command("subject_export", "nothing-here", "--user", "root")
