"""Reporting pages: the dashboard, its CSV and JSON, reconciliation and drift."""

import csv
import datetime
import io
import re
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from lxml import html

from meshline.roles import FINANCE, SALES_OPS, VIEWER
from reporting.models import DeclaredSchema, DriftFinding, ReconciliationRun
from syncflows.models import BriefVersion
from tests.conftest import make_user
from tests.test_kpis import Rows, at

pytestmark = pytest.mark.django_db
RANGE = "?start=2026-03-01&end=2026-03-03&tz=UTC"


@pytest.fixture
def viewer(client):
    user = make_user("vera", VIEWER)
    client.force_login(user)
    return user


@pytest.fixture
def rows():
    rows = Rows()
    version = rows.version("brief-a", ["discounts"])
    rows.sync(version, at(1, 10))
    rows.sync(version, at(1, 11), state="failed")
    return rows


def parse(response):
    return html.fromstring(response.content.decode())


def test_dashboard_renders_charts_and_tables(client, viewer, rows):
    response = client.get(reverse("reporting:dashboard") + RANGE)
    assert response.status_code == 200
    document = parse(response)
    assert "/static/vendor/plotly/plotly.min.js" in document.xpath("//script/@src")
    assert document.xpath('//div[@id="chart-success_rate"]')
    assert document.xpath('//div[@id="chart-revenue"]')
    assert document.xpath('//script[@id="kpi-data"]')
    success = response.context["result"]["kpis"][0]
    assert success["totals"]["all"]["value"] == "50.0"
    assert document.xpath(
        '//nav[@aria-label="Main"]//a[@aria-current="page"]/text()'
    ) == ["Dashboards"]


def test_dashboard_htmx_returns_results_only(client, viewer, rows):
    response = client.get(
        reverse("reporting:dashboard") + RANGE, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    document = parse(response)
    assert not document.xpath('//nav[@aria-label="Main"]')
    assert document.xpath('//script[@id="kpi-data"]')


def test_dashboard_query_count_is_pinned(client, viewer, rows):
    url = reverse("reporting:dashboard") + RANGE + "&segment=keyword"
    with CaptureQueriesContext(connection) as first:
        client.get(url)
    version = BriefVersion.objects.get(brief__slug="brief-a")
    for hour in range(12, 20):
        rows.sync(version, at(2, hour))
    with CaptureQueriesContext(connection) as second:
        client.get(url)
    assert len(second) == len(first)


def test_dashboard_rejects_bad_range(client, viewer):
    response = client.get(
        reverse("reporting:dashboard") + "?start=2026-03-05&end=2026-03-01"
    )
    assert response.status_code == 400
    assert "The start is after the end" in response.content.decode()


def test_kpi_table_as_csv(client, viewer, rows):
    response = client.get(
        reverse("reporting:dashboard") + RANGE + "&format=csv&table=success_rate"
    )
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    table = list(csv.reader(io.StringIO(response.content.decode())))
    assert table[0] == ["Period", "Segment", "Value", "Numerator", "Denominator"]
    assert table[1] == ["2026-03-01", "all", "50.0", "1", "2"]
    assert table[2] == ["2026-03-02", "all", "", "0", "0"]


def test_kpis_as_json(client, viewer, rows):
    response = client.get(reverse("reporting:api-kpis") + RANGE + "&pilot=2026-03-02")
    assert response.status_code == 200
    data = response.json()
    assert data["filters"]["pilot"] == "2026-03-02"
    success = data["kpis"][0]
    assert success["key"] == "success_rate"
    assert success["comparison"]["all"]["before"]["value"] == "50.0"
    assert success["comparison"]["all"]["after"]["value"] is None


def test_kpis_json_rejects_bad_time_zone(client, viewer):
    response = client.get(reverse("reporting:api-kpis") + "?tz=Mars/Olympus")
    assert response.status_code == 400
    assert "tz" in response.json()["errors"]


def test_reconciliation_start_needs_finance(client, viewer):
    response = client.post(
        reverse("reporting:reconciliation-start"),
        {"start": "2026-03-01", "end": "2026-03-02"},
    )
    assert response.status_code == 403


def test_reconciliation_start_and_report(client, rows):
    client.force_login(make_user("fiona", FINANCE))
    response = client.post(
        reverse("reporting:reconciliation-start"),
        {"start": "2026-03-01", "end": "2026-03-02"},
    )
    run = ReconciliationRun.objects.get()
    assert response["Location"] == reverse(
        "reporting:reconciliation-detail", args=[run.pk]
    )
    assert run.state == "done"
    assert run.total == 1
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert parse(page).xpath("//progress/@value") == ["100"]
    progress = client.get(response["Location"] + "?progress=1")
    assert not parse(progress).xpath("//*[@hx-trigger]")
    listing = client.get(reverse("reporting:reconciliation"))
    assert f"Run {run.pk}" in listing.content.decode()


def test_drift_page_shows_diff_and_review_button(client, rows):
    client.force_login(make_user("sam", SALES_OPS))
    DeclaredSchema.objects.create(
        connector=rows.connector,
        object_type="deal",
        fields={"amount": {"type": "string"}},
    )
    DriftFinding.objects.create(
        connector=rows.connector,
        object_type="deal",
        kind="removed",
        field_name="amount",
        declared_type="string",
        blocking=True,
        detected_at=at(1, 9),
        last_seen_at=at(1, 9),
    )
    response = client.get(reverse("reporting:drift"))
    assert response.status_code == 200
    document = parse(response)
    assert document.xpath('//button[text()="Accept change"]')
    marks = document.xpath(
        '//table[contains(@class, "diff")]'
        '//tr[contains(@class, "mark-minus")]/td[2]/text()'
    )
    assert marks == ["amount"]
    finding = DriftFinding.objects.get()
    client.post(reverse("reporting:drift-review", args=[finding.pk]), {"note": "ok"})
    finding.refresh_from_db()
    assert finding.state == "reviewed"
    csv_response = client.get(reverse("reporting:drift") + "?format=csv")
    assert "amount" in csv_response.content.decode()


def test_reporting_pages_need_login(client):
    for name in ("reporting:dashboard", "reporting:reconciliation", "reporting:drift"):
        assert client.get(reverse(name)).status_code == 302


def test_default_range_is_last_thirty_days(client, viewer):
    response = client.get(reverse("reporting:dashboard"))
    result = response.context["result"]
    start = datetime.date.fromisoformat(result["filters"]["start"])
    end = datetime.date.fromisoformat(result["filters"]["end"])
    assert (end - start).days == 29


# The pages in real Chromium, with screenshots under test-artifacts/screenshots.

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page(live_server, monkeypatch):
    playwright_api = pytest.importorskip("playwright.sync_api")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        yield context.new_page()
        context.close()
        browser.close()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_pages_in_chromium(browser_page, live_server):
    from django.contrib.auth.models import Group

    from meshline.roles import ALL_ROLES
    from reporting.services.reconciliation import execute_run, start_run
    from syncflows.demo import load_demo_configuration, load_demo_deliveries

    for name in ALL_ROLES:
        Group.objects.get_or_create(name=name)
    connectors = load_demo_configuration()
    load_demo_deliveries(12)
    DeclaredSchema.objects.create(
        connector=connectors["hubspot"],
        object_type="deal",
        fields={
            "amount": {"type": "string", "required": True},
            "dealname": {"type": "string"},
        },
    )
    from django.utils import timezone

    run = execute_run(
        start_run(timezone.now() - datetime.timedelta(days=1), timezone.now()).pk
    )
    user = make_user("fiona", FINANCE, SALES_OPS)
    user.set_password("pw-for-browser")
    user.save()

    page = browser_page
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Username").fill("fiona")
    page.get_by_label("Password").fill("pw-for-browser")
    page.get_by_role("button", name=re.compile("log in", re.I)).click()
    page.wait_for_load_state()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(live_server.url + "/dashboards/")
    shoot(page, "reporting-dashboard-loading")
    assert errors == []
    page.wait_for_selector("#chart-success_rate .main-svg")
    assert page.locator(".js-plotly-plot").count() == 8
    shoot(page, "reporting-dashboard")

    page.select_option("#id_segment", "keyword")
    page.wait_for_url(re.compile(r"segment=keyword"))
    page.wait_for_selector("#chart-success_rate .main-svg")
    shoot(page, "reporting-dashboard-by-keyword")

    page.goto(live_server.url + f"/reporting/reconciliation/{run.pk}/")
    assert page.locator("progress").get_attribute("value") == "100"
    shoot(page, "reporting-reconciliation")

    page.goto(live_server.url + "/reporting/drift/")
    shoot(page, "reporting-drift")


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
