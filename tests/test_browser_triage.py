"""A Finance user triages a missing SKU mapping in real Chromium."""

import contextlib
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from exceptions.demo import load_demo_lanes
from exceptions.models import ExceptionCase
from meshline.roles import ALL_ROLES, FINANCE
from syncflows.models import Brief, BriefVersion, Connector, SandboxOrder, Trigger
from tests.conftest import Sender, load_case

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


@pytest.fixture
def world(settings):
    """The demo, its lanes, a JSON deals connector and a Finance user."""
    from syncflows.demo import (
        GENERIC_MAPPING,
        ORDER_SCHEMA,
        TOTAL_MATCHES_CRM,
        load_demo_configuration,
    )
    from syncflows.services.configuration import save_trigger

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.MESHLINE_SLACK_WEBHOOK_URL = ""
    # Transaction tests flush the groups that a migration created.
    for name in ALL_ROLES:
        Group.objects.get_or_create(name=name)
    load_demo_configuration()
    load_demo_lanes()
    connector = Connector.objects.create(
        slug="deals-json",
        name="Deals as JSON",
        kind="generic",
        secrets=["whsec_deals"],
        settings={"object_type": "deal", "record_id_path": "id", "full_state": True},
    )
    trigger = save_trigger(
        Trigger(
            slug="json-deal",
            name="JSON deal",
            object_type="deal",
            connector=connector,
            condition="true",
        )
    )
    brief = Brief.objects.create(
        slug="json-deals", name="JSON deals", intent="Orders.", keywords=["CPQ"]
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
    finance = User.objects.create_user(
        "fay", "fay@example.com", PASSWORD, first_name="Fay"
    )
    finance.groups.add(Group.objects.get(name=FINANCE))

    sender = Sender(Client(), lambda execute: contextlib.nullcontext())
    deal = dict(load_case("C07-missing-product-mapping")["input"]["closed_deal"])
    deal["customer"] = "pipedrive:organization:201"
    assert (
        sender.generic(deal, secret="whsec_deals", slug="deals-json").status_code == 200
    )
    # A second deal whose total differs from its lines fails the acceptance check.
    mismatch = {
        **deal,
        "id": "900000099",
        "total": "1300.00",
        "line_items": deal["line_items"][:1],
    }
    assert (
        sender.generic(mismatch, secret="whsec_deals", slug="deals-json").status_code
        == 200
    )
    return finance


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
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_finance_fixes_missing_sku_and_retries(world, page, live_server):
    mapping_case = ExceptionCase.objects.get(reason_code="mapping_missing")
    acceptance_case = ExceptionCase.objects.get(reason_code="acceptance_failed")
    assert SandboxOrder.objects.count() == 0

    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Username").fill("fay")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("log in", re.I)).click()
    page.wait_for_url(re.compile(r"/exceptions/mine/"))
    shoot(page, "my-work")

    page.goto(live_server.url + "/exceptions/")
    assert page.locator("#case-count").inner_text() == "2 cases"
    shoot(page, "queue")

    # Filter to one lane: HTMX swaps the table and the count.
    page.select_option("#id_lane", "master-data")
    page.wait_for_url(re.compile(r"lane=master-data"))
    page.wait_for_function(
        "document.querySelector('#case-count').textContent.trim() === '1 case'"
    )
    rows = page.locator("#case-results tbody tr")
    assert rows.count() == 1
    assert "A value has no mapping" in rows.first.inner_text()

    page.goto(live_server.url + "/exceptions/lanes/master-data/")
    shoot(page, "lane")

    page.get_by_role("link", name="A value has no mapping").click()
    page.wait_for_url(re.compile(rf"/exceptions/{mapping_case.pk}/$"))
    assert "FAKE-SKU-404" in page.get_by_test_id("case-message").inner_text()
    assert page.get_by_label("CRM value (key)").input_value() == "FAKE-SKU-404"
    shoot(page, "case-mapping-missing")

    page.get_by_label("ERP value").fill("FAKE-SKU-200")
    page.get_by_role("button", name="Save the row and retry").click()
    page.wait_for_url(re.compile(rf"/exceptions/{mapping_case.pk}/$"))
    assert "now maps to FAKE-SKU-200" in page.locator(".messages").inner_text()
    assert page.locator(".case-status .state").inner_text() == "Resolved"
    order = SandboxOrder.objects.get()
    assert (
        page.get_by_test_id("erp-document")
        .inner_text()
        .startswith(f"ERP document {order.number}")
    )
    assert page.get_by_test_id("command-state").inner_text() == "Succeeded"
    shoot(page, "case-resolved")

    mapping_case.refresh_from_db()
    assert mapping_case.state == "resolved"
    assert [line["sku"] for line in order.lines] == ["FAKE-SKU-100", "FAKE-SKU-200"]
    assert str(order.total) == "1234.560"

    page.goto(live_server.url + f"/exceptions/{acceptance_case.pk}/")
    assert page.get_by_test_id("expected").inner_text() == "1300.00"
    assert page.get_by_test_id("actual").inner_text() == "1000.00"
    shoot(page, "case-acceptance-failed")


def test_keyboard_shortcuts_move_and_assign(world, page, live_server):
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Username").fill("fay")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("log in", re.I)).click()
    page.wait_for_url(re.compile(r"/exceptions/mine/"))
    page.goto(live_server.url + "/exceptions/")
    page.locator("body").press("j")
    page.keyboard.press("o")
    page.wait_for_url(re.compile(r"/exceptions/\d+/$"))
    page.keyboard.press("a")
    page.wait_for_load_state()
    assert "is assigned to you" in page.locator(".messages").inner_text()
    assert ExceptionCase.objects.filter(owner_user=world).count() == 1
