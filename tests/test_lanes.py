"""Ownership rules: the most specific rule wins, with a documented tie-break."""

import pytest
from django.contrib.auth.models import Group

from exceptions.demo import load_demo_lanes
from exceptions.models import ExceptionCase, Lane, OwnershipRule
from exceptions.services.cases import open_case_for_failure, pick_rule
from meshline.roles import FINANCE, MASTER_DATA, PRICING_OPS, TRIAGE_LEAD
from syncflows.models import Brief, Destination
from syncflows.services.failures import Failure
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def lanes():
    return load_demo_lanes()


@pytest.fixture
def sandbox():
    return Destination.objects.create(slug="erp-eu", name="ERP EU", adapter="sandbox")


def rule(lane, group, **match):
    return OwnershipRule.objects.create(
        lane=lane, owner_group=Group.objects.get(name=group), **match
    )


def test_more_specific_rule_wins(lanes, sandbox):
    OwnershipRule.objects.all().delete()
    broad = rule(lanes["master-data"], MASTER_DATA, reason_code="mapping_missing")
    narrow = rule(
        lanes["pricing"], PRICING_OPS, keyword="CPQ", reason_code="mapping_missing"
    )
    narrowest = rule(
        lanes["pricing"],
        PRICING_OPS,
        keyword="CPQ",
        business_unit="emea",
        destination=sandbox,
        reason_code="mapping_missing",
    )
    assert pick_rule(["CPQ"], "emea", sandbox.pk, "mapping_missing") == narrowest
    assert pick_rule(["CPQ"], "apac", sandbox.pk, "mapping_missing") == narrow
    assert pick_rule(["discounts"], "emea", sandbox.pk, "mapping_missing") == broad


def test_tie_break_lower_priority_then_older(lanes):
    OwnershipRule.objects.all().delete()
    first = rule(lanes["pricing"], PRICING_OPS, keyword="discounts", priority=50)
    second = rule(lanes["master-data"], MASTER_DATA, business_unit="emea", priority=50)
    urgent = rule(
        lanes["reconciliation"], FINANCE, reason_code="erp_rejected", priority=10
    )
    # Three rules with one filled field each match: priority 10 wins.
    assert pick_rule(["discounts"], "emea", None, "erp_rejected") == urgent
    urgent.delete()
    # Equal specificity and priority: the older rule (lower id) wins.
    assert first.pk < second.pk
    assert pick_rule(["discounts"], "emea", None, "erp_rejected") == first


def test_specificity_beats_priority(lanes):
    OwnershipRule.objects.all().delete()
    rule(lanes["pricing"], PRICING_OPS, keyword="discounts", priority=1)
    specific = rule(
        lanes["reconciliation"],
        FINANCE,
        keyword="discounts",
        reason_code="acceptance_failed",
        priority=999,
    )
    assert pick_rule(["discounts"], "", None, "acceptance_failed") == specific


def test_keyword_must_be_on_brief(lanes):
    OwnershipRule.objects.all().delete()
    rule(lanes["pricing"], PRICING_OPS, keyword="global-tax")
    assert pick_rule(["multi-ship"], "", None, "erp_rejected") is None


def test_rule_can_name_one_user(lanes):
    OwnershipRule.objects.all().delete()
    pia = make_user("pia", PRICING_OPS)
    OwnershipRule.objects.create(
        lane=lanes["pricing"], owner_user=pia, keyword="discounts"
    )
    brief = Brief.objects.create(
        slug="b", name="B", intent="x", keywords=["discounts"], sla_hours=6
    )
    case = open_case_for_failure(
        Failure(
            reason_code="acceptance_failed", message="m", record_key="k:1", brief=brief
        )
    )
    assert case.owner_user == pia
    assert case.state == "assigned"
    assert case.lane.slug == "pricing"
    assert case.keyword == "discounts"


def test_unmatched_case_goes_to_triage_lead(lanes):
    OwnershipRule.objects.all().delete()
    case = open_case_for_failure(
        Failure(
            reason_code="stale_event",
            message="Older change.",
            record_key="hubspot:deal:1",
        )
    )
    assert case.owner_group.name == TRIAGE_LEAD
    assert case.owner_user is None
    assert case.lane.slug == "drift"  # the lane that lists the reason code
    history = case.history.get()
    assert history.note.endswith("because no ownership rule matched.")


def test_unmatched_case_without_lane_creates_triage_lane():
    Lane.objects.all().delete()
    case = open_case_for_failure(
        Failure(reason_code="rate_limited", message="429", record_key="hubspot:deal:2")
    )
    assert case.lane.slug == "triage"
    assert case.owner_group.name == TRIAGE_LEAD


def test_case_sla_from_brief_then_lane(lanes, settings):
    settings.MESHLINE_BUSINESS_TIME_ZONE = "UTC"
    lane = lanes["drift"]  # counts wall-clock hours
    brief = Brief.objects.create(slug="b", name="B", intent="x", sla_hours=6)
    with_brief = open_case_for_failure(
        Failure(reason_code="drift_blocked", message="m", record_key="k:1", brief=brief)
    )
    without = open_case_for_failure(
        Failure(reason_code="drift_blocked", message="m", record_key="k:2")
    )
    assert with_brief.lane == lane
    assert (with_brief.due_at - with_brief.opened_at).total_seconds() == 6 * 3600
    assert (without.due_at - without.opened_at).total_seconds() == lane.sla_hours * 3600


def test_demo_lanes_load_twice(lanes):
    load_demo_lanes()
    assert Lane.objects.count() == 6
    assert OwnershipRule.objects.count() == 9
    assert ExceptionCase.objects.count() == 0


# The queue at 100,000 cases: a constant number of queries.


def bulk_cases(lane, count: int) -> None:
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    ExceptionCase.objects.bulk_create(
        [
            ExceptionCase(
                reason_code="mapping_missing",
                title="A value has no mapping",
                message="m",
                lane=lane,
                owner_group=lane.owner_group,
                record_key=f"bench:deal:{index}",
                opened_at=now,
                due_at=now + timedelta(minutes=index),
            )
            for index in range(count)
        ],
        batch_size=5000,
    )


# Session, user and roles (3), the case count and page (2), lane links,
# filter choices of lane, owner group and destination (4), and the bulk form's
# assignees (1).
QUEUE_QUERIES = 10


QUEUE_URLS = ["/exceptions/", "/exceptions/lanes/master-data/", "/exceptions/mine/"]


def test_queue_queries_constant_at_100k(client, lanes, django_assert_num_queries):
    fiona = make_user("fiona", FINANCE, MASTER_DATA)
    client.force_login(fiona)
    bulk_cases(lanes["master-data"], 10)
    for url in QUEUE_URLS:
        with django_assert_num_queries(QUEUE_QUERIES):
            assert client.get(url).status_code == 200
    bulk_cases(lanes["master-data"], 100_000 - 10)
    for url in QUEUE_URLS:
        with django_assert_num_queries(QUEUE_QUERIES):
            response = client.get(url)
        assert response.status_code == 200
        assert response.context["page"].paginator.count == 100_000, url
        assert len(response.context["page"].object_list) == 50
