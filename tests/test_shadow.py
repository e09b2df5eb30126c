"""Shadow diff over stored events and shadow mode on live events: field-level
differences of the commands, and nothing written to the outbox or an ERP."""

import copy

import pytest
from django.utils import timezone

from syncflows.demo import GENERIC_MAPPING, ORDER_SCHEMA, TOTAL_MATCHES_CRM
from syncflows.models import (
    Brief,
    BriefVersion,
    Command,
    Connector,
    SandboxOrder,
    ShadowResult,
    Trigger,
)
from syncflows.services import shadow
from syncflows.services.configuration import save_trigger

SECRET = "whsec_deals"
OLD_DISCOUNT = '"discount_percent": has(l.discount_percent) ? l.discount_percent : null'
# The draft adds five points to every line discount.
NEW_DISCOUNT = (
    '"discount_percent": has(l.discount_percent)'
    ' ? decimal.add(l.discount_percent, "5") : null'
)


def make_json_brief(slug="deals-json", business_unit="emea", keywords=("discounts",)):
    """A generic JSON connector, a trigger matching every deal and an active brief."""
    connector = Connector.objects.create(
        slug=slug,
        name=f"Deals as JSON ({business_unit})",
        kind="generic",
        secrets=[SECRET],
        business_unit=business_unit,
        settings={"object_type": "deal", "record_id_path": "id", "full_state": True},
    )
    trigger = Trigger.objects.filter(slug="json-deal").first() or save_trigger(
        Trigger(
            slug="json-deal", name="JSON deal", object_type="deal", condition="true"
        )
    )
    brief = Brief.objects.filter(slug="json-deals").first()
    if brief is None:
        brief = Brief.objects.create(
            slug="json-deals",
            name="JSON deals",
            intent="Every JSON deal becomes one sales order.",
            acceptance_text=(
                "The order total equals the deal amount, when the deal has one."
            ),
            keywords=list(keywords),
        )
        brief.triggers.add(trigger)
        BriefVersion.objects.create(
            brief=brief,
            number=1,
            state="active",
            mapping=GENERIC_MAPPING,
            command_schema=ORDER_SCHEMA,
            acceptance=[TOTAL_MATCHES_CRM],
        )
    return connector, brief


def deal(deal_id, lines):
    return {
        "id": deal_id,
        "customer": "pipedrive:organization:201",
        "currency": "EUR",
        "line_items": lines,
    }


def line(sku, quantity, price, discount=None):
    item = {"sku": sku, "quantity": quantity, "unit_price": price}
    if discount is not None:
        item["discount_percent"] = discount
    return item


def discount_draft(brief, state="draft"):
    mapping = copy.deepcopy(brief.active_version.mapping)
    assert OLD_DISCOUNT in mapping["lines"]
    mapping["lines"] = mapping["lines"].replace(OLD_DISCOUNT, NEW_DISCOUNT)
    return BriefVersion.objects.create(
        brief=brief,
        number=2,
        state=state,
        mapping=mapping,
        command_schema=ORDER_SCHEMA,
        acceptance=[TOTAL_MATCHES_CRM],
        approved_at=timezone.now() if state == "approved" else None,
    )


@pytest.fixture
def three_deals(demo, send):
    connector, brief = make_json_brief()
    for body in (
        deal("A-1", [line("FAKE-SKU-100", "2", "100.00", "10")]),
        deal("B-2", [line("FAKE-SKU-200", "1", "50.00")]),
        deal("C-3", [line("P1", "3", "19.99", "0")]),
    ):
        assert send.generic(body, secret=SECRET, slug=connector.slug).status_code == 200
    assert SandboxOrder.objects.count() == 3
    return brief


# Field-level differences, no database.


def test_diff_values_paths():
    before = {"total": "10.00", "lines": [{"sku": "A", "qty": "1"}], "po": None}
    after = {
        "total": "10.0",
        "lines": [{"sku": "B", "qty": "1"}, {"sku": "C"}],
        "po": "X",
    }
    assert shadow.diff_values(before, after) == [
        {"path": "lines[1].sku", "before": "A", "after": "B"},
        {"path": "lines[2]", "before": None, "after": {"sku": "C"}},
        {"path": "po", "before": None, "after": "X"},
    ]


def test_compare_marks_new_exception():
    before = shadow.Outcome(payload={"total": "5.00", "lines": []})
    after = shadow.Outcome(reason_code="mapping_missing", message="No SKU row.")
    row = shadow.compare("k", before, after)
    assert row["kind"] == "new_exception"
    assert row["after_reason"] == "mapping_missing"
    assert row["total_delta"] is None


def test_compare_same_is_none():
    outcome = shadow.Outcome(payload={"total": "5.00"})
    assert (
        shadow.compare("k", outcome, shadow.Outcome(payload={"total": "5.0"})) is None
    )


# The shadow diff over stored events.


@pytest.mark.django_db
def test_discount_change_shows_changed_totals(three_deals):
    brief = three_deals
    draft = discount_draft(brief)
    commands = Command.objects.count()

    diff = shadow.run_shadow_diff(draft, sample_size=200)

    by_record = {row["record_key"]: row for row in diff.rows}
    assert sorted(by_record) == ["deals-json:deal:A-1", "deals-json:deal:C-3"]
    first, third = by_record["deals-json:deal:A-1"], by_record["deals-json:deal:C-3"]
    assert (first["total_before"], first["total_after"], first["total_delta"]) == (
        "180.00",
        "170.00",
        "-10.00",
    )
    assert (third["total_before"], third["total_after"], third["total_delta"]) == (
        "59.97",
        "56.97",
        "-3.00",
    )
    assert {
        "path": "lines[1].discount_percent",
        "before": "10",
        "after": "15",
    } in first["differences"]
    assert first["kind"] == "changed"
    assert diff.summary == {
        "compared": 3,
        "differing": 2,
        "unchanged": 1,
        "totals_changed": 2,
        "net_total_delta": "-13.00",
        "changed": 2,
        "new_exception": 0,
        "fixed_exception": 0,
    }
    assert diff.baseline == brief.active_version
    assert Command.objects.count() == commands
    assert SandboxOrder.objects.count() == 3


@pytest.mark.django_db
def test_sample_size_limits_events(three_deals):
    draft = discount_draft(three_deals)
    diff = shadow.run_shadow_diff(draft, sample_size=1)
    assert diff.summary["compared"] == 1
    assert [row["record_key"] for row in diff.rows] == ["deals-json:deal:C-3"]


@pytest.mark.django_db
def test_new_exception_in_shadow_diff(three_deals):
    brief = three_deals
    mapping = copy.deepcopy(brief.active_version.mapping)
    mapping["lines"] = mapping["lines"].replace(
        'lookup("sku_map", l.sku)', 'lookup("sku_map", "X-" + l.sku)'
    )
    draft = BriefVersion.objects.create(
        brief=brief,
        number=2,
        state="draft",
        mapping=mapping,
        command_schema=ORDER_SCHEMA,
    )
    diff = shadow.run_shadow_diff(draft)
    assert diff.summary["new_exception"] == 3
    assert {row["after_reason"] for row in diff.rows} == {"mapping_missing"}


# Shadow mode on live events.


@pytest.mark.django_db
def test_shadow_mode_stores_and_never_sends(demo, send):
    connector, brief = make_json_brief()
    version = discount_draft(brief, state="approved")
    BriefVersion.objects.filter(pk=version.pk).update(shadow_started_at=timezone.now())

    body = deal("D-4", [line("FAKE-SKU-100", "1", "200.00", "10")])
    assert send.generic(body, secret=SECRET, slug=connector.slug).status_code == 200

    command = Command.objects.get()
    assert command.brief_version.number == 1
    assert command.payload["total"] == "180.00"
    result = ShadowResult.objects.get()
    assert result.version_id == version.pk
    assert result.active_version.number == 1
    assert result.differs is True
    assert result.payload["total"] == "170.00"
    assert {
        "path": "total",
        "before": "180.00",
        "after": "170.00",
    } in result.differences
    summary = shadow.shadow_summary(version)
    assert (summary["total"], summary["differing"], summary["new_exceptions"]) == (
        1,
        1,
        0,
    )
    assert SandboxOrder.objects.get().total == 180


@pytest.mark.django_db
def test_broken_shadow_does_not_fail_live(demo, send):
    connector, brief = make_json_brief()
    version = discount_draft(brief, state="approved")
    BriefVersion.objects.filter(pk=version.pk).update(
        shadow_started_at=timezone.now(), mapping={"total": "record.missing_field"}
    )
    body = deal("E-5", [line("FAKE-SKU-100", "1", "10.00")])
    assert send.generic(body, secret=SECRET, slug=connector.slug).status_code == 200
    assert SandboxOrder.objects.count() == 1
    result = ShadowResult.objects.get()
    assert result.reason_code == "schema_invalid"
    assert result.differs is True
