"""Schema drift: a mapped CRM field is renamed in deliveries.

The HubSpot brief's writes are held, the Pipedrive brief keeps syncing, and
after a Sales Ops review one release sends every held command exactly once.
"""

import datetime
import time

import pytest
from django.core.exceptions import PermissionDenied

from exceptions.models import ExceptionCase
from meshline.roles import FINANCE, SALES_OPS
from reporting.models import DeclaredSchema, DriftFinding, ObservedField
from reporting.services.drift import (
    compare_record,
    compare_window,
    release_brief,
    review_finding,
    run_nightly,
)
from reporting.services.fields import fields_of_expression, fields_of_version
from syncflows.demo import _pipedrive_won
from syncflows.models import BriefVersion, Command, LedgerEntry, SandboxOrder
from tests.conftest import make_user

HUBSPOT_FIELDS = {
    "amount": {"type": "string", "required": True},
    "deal_currency_code": {"type": "string", "required": True},
    "dealname": {"type": "string", "required": True},
    "dealstage": {"type": "string", "required": True},
}


def hubspot_events(deal_id: int, name_field: str = "dealname") -> list:
    when_ms = int(time.time() * 1000)
    props = [
        ("amount", "1500.00"),
        ("deal_currency_code", "EUR"),
        (name_field, f"FAKE-Deal {deal_id}"),
        ("dealstage", "closedwon"),
    ]
    return [
        {
            "subscriptionId": 200001,
            "portalId": 1234567,
            "appId": 300001,
            "attemptNumber": 0,
            "eventId": deal_id * 10 + index,
            "occurredAt": when_ms + index,
            "subscriptionType": "deal.propertyChange",
            "objectId": deal_id,
            "propertyName": name,
            "propertyValue": value,
            "changeSource": "CRM_UI",
        }
        for index, (name, value) in enumerate(props)
    ]


def command_of(deal_key: str) -> Command:
    return Command.objects.get(record__record_key=deal_key)


@pytest.fixture
def declared(demo):
    return DeclaredSchema.objects.create(
        connector=demo["hubspot"], object_type="deal", fields=HUBSPOT_FIELDS
    )


def test_used_fields_of_mapping(demo):
    version = BriefVersion.objects.get(brief__slug="hubspot-won-deals", state="active")
    used = fields_of_version(version)
    assert {"amount", "dealname", "deal_currency_code", "closedate"} <= used
    assert "line_item" not in used
    assert fields_of_expression("li.record.SBQQ__Quantity__c") == set()
    assert fields_of_expression('has(record.x) ? record["y"] : null') == {"x"}


def test_compare_record_kinds():
    declared = {
        "amount": {"type": "string", "required": True},
        "stage": {"type": "string"},
    }
    state = {"amount_total": "1.00", "stage": 3, "extra": True}
    found = {
        (d.kind, d.field_name, d.new_name) for d in compare_record(declared, state)
    }
    assert found == {
        ("renamed", "amount", "amount_total"),
        ("retyped", "stage", ""),
        ("added", "extra", ""),
    }


def test_compare_window_reports_removed():
    declared = {"amount": {"type": "string"}, "stage": {"type": "string"}}
    found = compare_window(declared, {"stage": {"string", "null"}})
    assert [(d.kind, d.field_name) for d in found] == [("removed", "amount")]


def test_renamed_field_holds_brief_until_review(
    demo, declared, send, django_capture_on_commit_callbacks
):
    sales_ops = make_user("sam.salesops", SALES_OPS)
    finance = make_user("fiona.finance", FINANCE)

    send.hubspot(hubspot_events(810000001))
    assert command_of("hubspot:deal:810000001").state == "succeeded"

    send.hubspot(hubspot_events(810000002, name_field="deal_name"))
    send.hubspot(hubspot_events(810000003, name_field="deal_name"))
    send.pipedrive(
        _pipedrive_won(820000001, "990.00", "EUR", datetime.datetime.now(datetime.UTC))
    )

    held = [command_of(f"hubspot:deal:81000000{n}") for n in (2, 3)]
    assert [c.state for c in held] == ["held", "held"]
    assert [c.reason_code for c in held] == ["drift_blocked", "drift_blocked"]
    assert (
        SandboxOrder.objects.filter(
            idempotency_key__in=[c.idempotency_key for c in held]
        ).count()
        == 0
    )
    assert command_of("pipedrive:deal:820000001").state == "succeeded"

    finding = DriftFinding.objects.get(blocking=True)
    assert finding.kind == "renamed"
    assert finding.field_name == "dealname"
    assert finding.new_name == "deal_name"
    assert [b.slug for b in finding.briefs.all()] == ["hubspot-won-deals"]
    cases = ExceptionCase.objects.filter(reason_code="drift_blocked")
    assert cases.count() == 2
    assert ObservedField.objects.filter(
        connector=demo["hubspot"], name="deal_name"
    ).exists()

    with pytest.raises(PermissionDenied):
        review_finding(finding, acting_user=finance)
    with pytest.raises(ValueError):
        release_brief(finding.briefs.get().pk, acting_user=finance)

    review_finding(finding, acting_user=sales_ops, note="CRM renamed the field.")
    declared.refresh_from_db()
    assert "deal_name" in declared.fields
    assert "dealname" not in declared.fields

    with django_capture_on_commit_callbacks(execute=True):
        released = release_brief(finding.briefs.get().pk, acting_user=finance)

    assert released == 2
    for command in held:
        command.refresh_from_db()
        assert command.state == "succeeded"
        assert (
            SandboxOrder.objects.filter(idempotency_key=command.idempotency_key).count()
            == 1
        )
        assert LedgerEntry.objects.filter(command=command, step="execute").count() == 1
    assert cases.filter(state="resolved").count() == 2
    assert release_brief(finding.briefs.get().pk, acting_user=finance) == 0


def test_unused_field_drift_is_reported_only(demo, declared, send):
    send.hubspot(
        hubspot_events(830000001)
        + [
            {
                **hubspot_events(830000001)[0],
                "eventId": 8300000019,
                "propertyName": "hs_new_score",
                "propertyValue": "7",
            }
        ]
    )
    assert command_of("hubspot:deal:830000001").state == "succeeded"
    finding = DriftFinding.objects.get(field_name="hs_new_score")
    assert finding.kind == "added"
    assert finding.blocking is False


def test_nightly_run_finds_retyped_field(demo, declared, send):
    declared.fields = {
        **HUBSPOT_FIELDS,
        "amount": {"type": "integer", "required": True},
    }
    declared.save()
    DriftFinding.objects.all().delete()
    send.pipedrive(
        _pipedrive_won(840000001, "10.00", "EUR", datetime.datetime.now(datetime.UTC))
    )
    from syncflows.models import RecordChange, SourceRecord

    record = SourceRecord.objects.create(
        connector=demo["hubspot"],
        object_type="deal",
        record_id="x",
        record_key="hubspot:deal:x",
    )
    event_change = RecordChange.objects.filter(
        record__connector=demo["pipedrive"]
    ).first()
    RecordChange.objects.create(
        record=record,
        event=_copy_event(event_change.event, demo["hubspot"]),
        change_type="create",
        revision=1,
        occurred_at=event_change.occurred_at,
        state={
            "amount": "10.00",
            "deal_currency_code": "EUR",
            "dealname": "x",
            "dealstage": "won",
        },
        previous={},
        changed=["amount", "deal_currency_code", "dealname", "dealstage"],
        status="unmatched",
    )

    result = run_nightly()

    assert result["differences"] == 1
    finding = DriftFinding.objects.get()
    assert (finding.kind, finding.field_name, finding.observed_type) == (
        "retyped",
        "amount",
        "string",
    )
    assert finding.blocking is True


def _copy_event(event, connector):
    from syncflows.models import InboundEvent

    return InboundEvent.objects.create(
        delivery=event.delivery,
        connector=connector,
        position=9,
        dedupe_key="nightly-copy",
        object_type="deal",
        record_id="x",
        occurred_at=event.occurred_at,
        payload={},
        received_at=event.received_at,
    )
