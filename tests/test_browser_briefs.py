"""The brief lifecycle in real Chromium: Sales Ops edits a mapping and fixes a
failing synthetic test, Finance reviews the shadow diff and approves, and the
version goes live as a canary for one business unit, then for all."""

import contextlib
import json
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from meshline.roles import ALL_ROLES, FINANCE, SALES_OPS
from syncflows.models import BriefVersion, Command, Destination, Route, SyntheticTest
from tests.conftest import Sender
from tests.test_shadow import OLD_DISCOUNT, SECRET, deal, line, make_json_brief
from tests.test_synthetic import DISCOUNTED

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery staple"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The CRM sends a per-unit discount amount that version 1 never mapped.
BUGGY = OLD_DISCOUNT + ', "discount_amount": l.discount_amount'
FIXED = (
    OLD_DISCOUNT
    + ', "discount_amount": has(l.discount_amount) ? l.discount_amount : null'
)


def user(username, role):
    person = User.objects.create_user(username, f"{username}@example.com", PASSWORD)
    person.groups.add(Group.objects.get(name=role))
    return person


@pytest.fixture
def world(settings):
    from syncflows.demo import load_demo_configuration

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.MESHLINE_CANARY_POLICY = "always"
    # Transaction tests flush the groups that a migration created.
    for name in ALL_ROLES:
        Group.objects.get_or_create(name=name)
    load_demo_configuration()
    emea, brief = make_json_brief(slug="deals-emea", business_unit="emea")
    amer, _ = make_json_brief(slug="deals-amer", business_unit="amer")
    sandbox = Destination.objects.get(slug="sandbox")
    for unit in ("emea", "amer"):
        Route.objects.create(business_unit=unit, destination=sandbox)
    SyntheticTest.objects.create(
        brief=brief,
        name="Ten percent off two units",
        keyword="discounts",
        payload=DISCOUNTED,
        expected_command={"total": "180.00"},
    )
    sender = Sender(Client(), lambda execute: contextlib.nullcontext())
    stored = [
        (
            emea,
            deal(
                "A-1",
                [
                    line("FAKE-SKU-100", "2", "100.00", "10")
                    | {"discount_amount": "7.50"}
                ],
            ),
        ),
        (amer, deal("B-2", [line("FAKE-SKU-200", "1", "50.00")])),
        (emea, deal("C-3", [line("P1", "3", "19.99", "0")])),
    ]
    for connector, body in stored:
        assert (
            sender.generic(body, secret=SECRET, slug=connector.slug).status_code == 200
        )
    people = {
        "sam": user("sam", SALES_OPS),
        "sally": user("sally", SALES_OPS),
        "fiona": user("fiona", FINANCE),
    }
    return {"brief": brief, "emea": emea, "amer": amer, "sender": sender, **people}


@pytest.fixture
def page(live_server, monkeypatch):
    playwright_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API keeps an event loop running in this thread, which
    # Django's ORM would take for async code; the test only reads results.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        yield context.new_page()
        context.close()
        browser.close()


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"briefs-{name}.png"), full_page=True)


def log_in(page, live_server, username):
    page.context.clear_cookies()
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("log in", re.I)).click()
    page.wait_for_url(re.compile(r"/exceptions/mine/"))


def set_lines(page, lines_expression):
    mapping = json.loads(page.input_value("#id_mapping"))
    mapping["lines"] = lines_expression
    page.fill("#id_mapping", json.dumps(mapping, indent=2))


def test_brief_change_from_edit_to_live(world, page, live_server):
    brief = world["brief"]
    original_lines = brief.active_version.mapping["lines"]

    # Sales Ops edits the mapping and tries it on the example payload.
    log_in(page, live_server, "sam")
    page.goto(f"{live_server.url}/briefs/")
    shoot(page, "list")
    page.get_by_role("link", name="JSON deals").click()
    page.get_by_role("link", name="Edit as a new draft").click()
    set_lines(page, original_lines.replace(OLD_DISCOUNT, BUGGY))
    page.select_option("#try-source", label="discounts: Ten percent off two units")
    page.get_by_role("button", name="Try it").click()
    result = page.locator("[data-testid=try-result]")
    result.wait_for()
    assert "is not in the data" in result.inner_text()
    assert "at column" in result.inner_text()
    shoot(page, "try-it-error")

    # Saving runs the synthetic tests: the discount test fails.
    page.get_by_role("button", name="Save draft and run the synthetic tests").click()
    page.wait_for_url(re.compile(r"/briefs/json-deals/v2/edit/"))
    failing = page.locator(".result-fail[data-testid=synthetic-result]")
    assert failing.count() == 1
    assert "Expected a command, got schema_invalid" in failing.inner_text()
    shoot(page, "synthetic-failing")

    # The fix: map the discount amount only where the CRM sends one.
    set_lines(page, original_lines.replace(OLD_DISCOUNT, FIXED))
    page.fill("#id_comment", "Map the per-unit discount amount from the CRM.")
    page.get_by_role("button", name="Save draft and run the synthetic tests").click()
    page.wait_for_url(re.compile(r"/briefs/json-deals/v2/edit/"))
    assert page.locator(".result-pass[data-testid=synthetic-result]").count() == 1
    page.get_by_role("link", name="Back to the brief").click()
    page.fill("#submit-comment", "Please review the discount amount.")
    page.get_by_role("button", name="Submit v2 for review").click()
    assert "v2 is in review" in page.locator(".messages").inner_text()
    shoot(page, "submitted")

    # Another Sales Ops member approves the CRM side.
    log_in(page, live_server, "sally")
    page.goto(f"{live_server.url}/briefs/review/sales-ops/")
    page.get_by_role("link", name="JSON deals v2").click()
    page.fill("#crm-comment", "CRM fields are right.")
    page.get_by_role("button", name="Approve the CRM side").click()
    assert "You approved the CRM side of v2." in page.locator(".messages").inner_text()

    # Finance runs the shadow diff, reads the changed order, approves.
    log_in(page, live_server, "fiona")
    page.goto(f"{live_server.url}/briefs/review/finance/")
    shoot(page, "finance-queue")
    page.get_by_role("link", name="JSON deals v2").click()
    assert page.input_value("#sample-size") == "200"
    page.get_by_role("button", name="Run the shadow diff").click()
    rows = page.locator("[data-testid=shadow-rows] tbody tr")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-record") == "deals-emea:deal:A-1"
    assert rows.first.locator("[data-testid=total-delta]").inner_text() == "-15.00"
    summary = page.locator("[data-testid=shadow-summary]").inner_text()
    assert "Replayed 3 records" in summary
    shoot(page, "shadow-diff")
    page.fill("#erp-comment", "Only A-1 changes, by 15.00 EUR.")
    page.get_by_role("button", name="Approve the ERP side").click()
    assert BriefVersion.objects.get(brief=brief, number=2).state == "approved"

    # The policy asks for a canary first; go live for emea, then for all.
    assert page.get_by_role(
        "button", name="Make active for all business units"
    ).is_disabled()
    page.select_option("#canary-unit", "emea")
    page.get_by_role("button", name="Start canary").click()
    assert "v2 runs as a canary." in page.locator(".messages").inner_text()
    body = deal(
        "A-4", [line("FAKE-SKU-100", "1", "100.00") | {"discount_amount": "10.00"}]
    )
    assert (
        world["sender"].generic(body, secret=SECRET, slug="deals-emea").status_code
        == 200
    )
    assert Command.objects.get(record__record_id="A-4").brief_version.number == 2
    page.reload()
    rates = page.locator("[data-testid=canary-rates] tbody tr")
    assert rates.count() == 2
    assert rates.first.inner_text().split("\t")[:3] == ["Canary v2", "emea", "1"]
    shoot(page, "canary")

    page.get_by_role("button", name="Make active for all business units").click()
    assert (
        "v2 is active for every business unit."
        in page.locator(".messages").inner_text()
    )
    body = deal(
        "B-5", [line("FAKE-SKU-200", "1", "40.00") | {"discount_amount": "5.00"}]
    )
    assert (
        world["sender"].generic(body, secret=SECRET, slug="deals-amer").status_code
        == 200
    )
    command = Command.objects.get(record__record_id="B-5")
    assert command.brief_version.number == 2
    assert command.payload["total"] == "35.00"
    shoot(page, "live")
