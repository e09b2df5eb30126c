"""Canary: an approved version runs for one business unit while the others
keep the active version; then it goes live for all, or stops."""

import pytest
from django.utils import timezone

from meshline.roles import FINANCE, SALES_OPS
from syncflows.models import BriefVersion, Command, Destination, Route
from syncflows.services import briefs as lifecycle
from syncflows.services.config import load_config
from syncflows.services.errors import ActionRefused
from syncflows.views.briefs import canary_rates
from tests.conftest import make_user
from tests.test_shadow import SECRET, deal, discount_draft, line, make_json_brief

pytestmark = pytest.mark.django_db


@pytest.fixture
def units(demo):
    emea, brief = make_json_brief(slug="deals-emea", business_unit="emea")
    amer, _ = make_json_brief(slug="deals-amer", business_unit="amer")
    sandbox = Destination.objects.get(slug="sandbox")
    for unit in ("emea", "amer"):
        Route.objects.create(business_unit=unit, destination=sandbox)
    version = discount_draft(brief, state="approved")
    return brief, version, emea, amer


@pytest.fixture
def release():
    return make_user("fiona.finance", FINANCE)


def send_deal(send, connector, deal_id):
    body = deal(deal_id, [line("FAKE-SKU-100", "1", "200.00", "10")])
    assert send.generic(body, secret=SECRET, slug=connector.slug).status_code == 200
    return Command.objects.get(record__record_id=deal_id)


def test_canary_runs_for_one_unit(units, send, release):
    brief, version, emea, amer = units
    lifecycle.start_canary(version, business_unit="emea", acting_user=release)

    emea_command = send_deal(send, emea, "E-1")
    amer_command = send_deal(send, amer, "A-1")

    assert emea_command.brief_version_id == version.pk
    assert emea_command.payload["total"] == "170.00"
    assert amer_command.brief_version.number == 1
    assert amer_command.payload["total"] == "180.00"


def test_canary_rates_beside_active(units, send, release):
    brief, version, emea, amer = units
    lifecycle.start_canary(version, business_unit="emea", acting_user=release)
    send_deal(send, emea, "E-1")
    send_deal(send, amer, "A-1")
    send_deal(send, amer, "A-2")
    canary, active = canary_rates(BriefVersion.objects.get(pk=version.pk))
    assert (
        canary["label"],
        canary["runs"],
        canary["succeeded"],
        canary["exceptions"],
    ) == (
        "Canary",
        1,
        1,
        0,
    )
    assert (active["label"], active["runs"], active["succeeded"]) == ("Active", 2, 2)
    assert canary["success_rate"] == "100.0 %"
    assert active["exception_rate"] == "0.0 %"


def test_canary_then_all(units, send, release):
    brief, version, emea, amer = units
    lifecycle.start_canary(version, business_unit="emea", acting_user=release)
    lifecycle.activate(version, acting_user=release)
    command = send_deal(send, amer, "A-9")
    assert command.brief_version_id == version.pk
    assert BriefVersion.objects.get(pk=version.pk).canary_business_unit == ""


def test_stopped_canary_returns_unit(units, send, release):
    brief, version, emea, amer = units
    lifecycle.start_canary(version, business_unit="emea", acting_user=release)
    lifecycle.stop_canary(version, acting_user=release)
    command = send_deal(send, emea, "E-7")
    assert command.brief_version.number == 1


def test_one_canary_per_brief(units, release):
    brief, version, emea, amer = units
    lifecycle.start_canary(version, business_unit="emea", acting_user=release)
    other = BriefVersion.objects.create(
        brief=brief,
        number=3,
        state="approved",
        mapping=version.mapping,
        command_schema=version.command_schema,
        approved_at=timezone.now(),
    )
    with pytest.raises(ActionRefused, match="already runs as the canary for emea"):
        lifecycle.start_canary(other, business_unit="amer", acting_user=release)


def test_canary_rejected_for_draft(units):
    brief, version, emea, amer = units
    author = make_user("sam.salesops", SALES_OPS)
    BriefVersion.objects.filter(pk=version.pk).update(state="draft")
    with pytest.raises(ActionRefused, match="is draft"):
        lifecycle.start_canary(version, business_unit="emea", acting_user=author)


def test_config_selects_by_unit(units, release):
    brief, version, emea, amer = units
    lifecycle.start_canary(version, business_unit="emea", acting_user=release)
    config = load_config()
    trigger_id = brief.triggers.get().pk
    assert [v.number for v in config.versions_for(trigger_id, "emea")] == [2]
    assert [v.number for v in config.versions_for(trigger_id, "amer")] == [1]
    assert config.live_version(brief.pk, "emea").number == 2
