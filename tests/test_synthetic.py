"""Synthetic tests: example payloads with expected commands or reason codes,
run in dry-run with the sandbox's preflight, on save and nightly."""

import copy

import pytest
from django_q.models import Schedule

from meshline.roles import FINANCE, SALES_OPS
from syncflows.models import Command, SandboxOrder, SyntheticRun, SyntheticTest
from syncflows.services import briefs as lifecycle
from syncflows.services import synthetic
from syncflows.services.errors import ActionRefused
from tests.conftest import make_user
from tests.test_shadow import NEW_DISCOUNT, OLD_DISCOUNT, make_json_brief

pytestmark = pytest.mark.django_db

DISCOUNTED = {
    "record": {
        "customer": "pipedrive:organization:201",
        "currency": "EUR",
        "line_items": [
            {
                "sku": "FAKE-SKU-100",
                "quantity": "2",
                "unit_price": "100.00",
                "discount_percent": "10",
            }
        ],
    }
}


def add_tests(brief):
    unknown_sku = copy.deepcopy(DISCOUNTED)
    unknown_sku["record"]["line_items"][0]["sku"] = "NOT-MAPPED"
    unknown_customer = copy.deepcopy(DISCOUNTED)
    unknown_customer["record"]["customer"] = "nobody:1"
    SyntheticTest.objects.create(
        brief=brief,
        name="Ten percent off two units",
        keyword="discounts",
        payload=DISCOUNTED,
        expected_command={
            "total": "180.00",
            "lines": [{"sku": "FAKE-SKU-100", "line_total": "180.00"}],
        },
    )
    SyntheticTest.objects.create(
        brief=brief,
        name="Unmapped SKU",
        keyword="sku",
        payload=unknown_sku,
        expected_reason="mapping_missing",
    )
    SyntheticTest.objects.create(
        brief=brief,
        name="Unknown customer",
        keyword="customers",
        payload=unknown_customer,
        expected_reason="master_data_missing",
    )


@pytest.fixture
def brief(demo):
    _connector, brief = make_json_brief(keywords=("discounts", "sku", "customers"))
    add_tests(brief)
    return brief


def test_active_version_passes_all(brief):
    run = synthetic.run_synthetic_tests(brief.active_version)
    assert (run.passed, run.failed) == (3, 0)
    results = {r.test.name: r for r in run.results.select_related("test")}
    assert results["Ten percent off two units"].command["total"] == "180.00"
    assert results["Unmapped SKU"].reason_code == "mapping_missing"
    # Only the sandbox's preflight knows the customers: the mapping passed.
    assert results["Unknown customer"].reason_code == "master_data_missing"
    assert Command.objects.count() == 0
    assert SandboxOrder.objects.count() == 0


def test_results_grouped_by_keyword(brief):
    run = synthetic.run_synthetic_tests(brief.active_version)
    groups = synthetic.results_by_keyword(run)
    assert [keyword for keyword, _ in groups] == ["customers", "discounts", "sku"]
    assert [len(results) for _, results in groups] == [1, 1, 1]


def broken_discount(version):
    mapping = copy.deepcopy(version.mapping)
    mapping["lines"] = mapping["lines"].replace(OLD_DISCOUNT, NEW_DISCOUNT)
    return mapping


def test_save_runs_tests_and_blocks_submit(brief):
    author = make_user("sam.salesops", SALES_OPS)
    draft = lifecycle.create_draft(brief, acting_user=author)
    draft, run = lifecycle.save_version(
        draft, {"mapping": broken_discount(draft)}, acting_user=author
    )
    assert run.cause == SyntheticRun.Cause.SAVE
    assert (run.passed, run.failed) == (2, 1)
    failed = run.results.get(passed=False)
    assert failed.test.keyword == "discounts"
    assert failed.message == (
        "lines[1].line_total: expected '180.00', got '170.00'; "
        "total: expected '180.00', got '170.00'"
    )
    with pytest.raises(ActionRefused, match="1 synthetic test"):
        lifecycle.submit(draft, acting_user=author)

    draft, run = lifecycle.save_version(
        draft, {"mapping": brief.active_version.mapping}, acting_user=author
    )
    assert run.failed == 0
    assert lifecycle.submit(draft, acting_user=author).state == "in_review"


def test_failing_tests_block_approval(brief):
    author = make_user("sam.salesops", SALES_OPS)
    reviewer = make_user("sally.salesops", SALES_OPS)
    draft = lifecycle.create_draft(brief, acting_user=author)
    lifecycle.save_version(draft, {}, acting_user=author)
    lifecycle.submit(draft, acting_user=author)
    # A later run finds a failure: the ERP retired the product.
    from syncflows.models import SandboxProduct

    SandboxProduct.objects.filter(code="FAKE-SKU-100").update(is_active=False)
    run = synthetic.run_synthetic_tests(draft, cause=SyntheticRun.Cause.NIGHTLY)
    assert run.failed == 1
    with pytest.raises(ActionRefused, match="synthetic test"):
        lifecycle.approve(draft, side="crm", acting_user=reviewer)


def test_expected_reason_mismatch_message(brief):
    test = SyntheticTest.objects.get(name="Unmapped SKU")
    outcome = synthetic.Outcome(payload={"total": "1.00"})
    assert synthetic.judge(test, outcome) == (
        False,
        "Expected the reason code mapping_missing, got a valid command.",
    )


def test_nightly_runs_active_versions(brief):
    make_user("fiona.finance", FINANCE)
    assert synthetic.run_nightly() == 1
    run = SyntheticRun.objects.get()
    assert run.cause == "nightly"
    assert run.version == brief.active_version


def test_nightly_schedule_exists():
    schedule = Schedule.objects.get(name="meshline-synthetic-nightly")
    assert schedule.func == "syncflows.services.synthetic.run_nightly"
    assert schedule.schedule_type == "D"
