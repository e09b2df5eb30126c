"""Server-rendered pages: logins, roles, HTMX partials and pinned query counts.

Test data is built with the ORM, so these tests do not depend on the pipeline.
"""

import datetime

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from lxml import html

from exceptions.models import CaseHistory, ExceptionCase, Lane
from meshline.roles import ADMIN, FINANCE, TRIAGE_LEAD, VIEWER
from syncflows.models import (
    Brief,
    BriefVersion,
    Command,
    Connector,
    Delivery,
    Destination,
    InboundEvent,
    LedgerEntry,
    SourceRecord,
)

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
RAW_BODY = b'{"dealname": "Acme renewal", "email": "jane.doe@example.com"}'


# Users, one per role the pages distinguish.


def make_user(username: str, *groups: str) -> User:
    user = User.objects.create_user(username, password=PASSWORD)
    user.groups.set(Group.objects.filter(name__in=groups))
    return user


@pytest.fixture
def viewer():
    return make_user("vera.viewer", VIEWER)


@pytest.fixture
def finance():
    return make_user("fiona.finance", FINANCE)


@pytest.fixture
def triage_lead():
    return make_user("tariq.triage", TRIAGE_LEAD)


@pytest.fixture
def admin_user():
    return make_user("ada.admin", ADMIN)


def client_for(client, user):
    client.force_login(user)
    return client


# Pipeline rows built directly with the ORM.


@pytest.fixture
def connector():
    return Connector.objects.create(
        slug="hubspot-eu", name="HubSpot EU", kind="hubspot"
    )


@pytest.fixture
def destination():
    return Destination.objects.create(
        slug="sandbox", name="Sandbox ERP", adapter="sandbox"
    )


@pytest.fixture
def brief_version(finance):
    brief = Brief.objects.create(
        slug="won-deals",
        name="Won deals to sales orders",
        intent="Closed-won deals become sales orders.",
        owner=finance,
        keywords=["discounts", "CPQ"],
    )
    return BriefVersion.objects.create(
        brief=brief, number=1, state="active", mapping={}, command_schema={}
    )


@pytest.fixture
def lane():
    return Lane.objects.create(
        slug="finance", name="Finance lane", owner_group=Group.objects.get(name=FINANCE)
    )


def make_delivery(connector, index: int, status="accepted", body=RAW_BODY):
    return Delivery.objects.create(
        connector=connector,
        received_at=timezone.now() - datetime.timedelta(minutes=index),
        source=Delivery.Source.WEBHOOK,
        status=status,
        content_hash=f"hash-{index}",
        body=body,
        size=len(body),
        content_type="application/json",
        headers={"X-HubSpot-Signature-v3": f"sig-{index}"},
        error="Body is not valid JSON." if status != "accepted" else "",
    )


def make_event(delivery, index: int) -> InboundEvent:
    now = timezone.now()
    return InboundEvent.objects.create(
        delivery=delivery,
        connector=delivery.connector,
        position=0,
        crm_event_id=f"evt-{index}",
        dedupe_key=f"evt-{index}",
        event_type="deal.propertyChange",
        object_type="deal",
        record_id=str(900000 + index),
        occurred_at=now,
        payload={"objectId": 900000 + index},
        received_at=now,
    )


def make_record(connector, index: int) -> SourceRecord:
    record_id = str(900000 + index)
    return SourceRecord.objects.create(
        connector=connector,
        object_type="deal",
        record_id=record_id,
        record_key=f"{connector.record_namespace}:deal:{record_id}",
        state={"amount": "1200.00", "dealstage": "closedwon"},
        revision=1,
    )


def make_command(record, destination, version, index: int, **fields) -> Command:
    values = {
        "idempotency_key": f"key-{index}",
        "command_type": "sales_order.create",
        "brief_version": version,
        "record": record,
        "destination": destination,
        "payload": {"total": "1200.00", "currency": "EUR"},
        "payload_hash": f"payload-{index}",
        "ordering_key": record.record_key,
        "next_attempt_at": timezone.now(),
        **fields,
    }
    return Command.objects.create(**values)


def make_case(lane, record_key: str, **fields) -> ExceptionCase:
    now = timezone.now()
    values = {
        "reason_code": "mapping_missing",
        "title": "A value has no mapping",
        "message": "SKU WIDGET-9 is not in the SKU map.",
        "suggested_fix": "Add the missing row to the lookup table, then retry.",
        "detail": {"table": "sku-map", "key": "WIDGET-9", "line": {"quantity": 2}},
        "lane": lane,
        "owner_group": lane.owner_group,
        "record_key": record_key,
        "opened_at": now,
        "due_at": now + datetime.timedelta(hours=24),
        **fields,
    }
    return ExceptionCase.objects.create(**values)


@pytest.fixture
def make_rows(connector, destination, brief_version, lane, finance):
    """Return a builder of ``count`` rows for every list page."""

    def build(count: int, start: int = 0):
        for index in range(start, start + count):
            status = "quarantined" if index % 2 else "accepted"
            delivery = make_delivery(connector, index, status=status)
            make_event(delivery, index)
            record = make_record(connector, index)
            command = make_command(record, destination, brief_version, index)
            make_case(lane, record.record_key, command=command, owner_user=finance)
            brief = Brief.objects.create(
                slug=f"brief-{index}", name=f"Brief {index}", intent="x", owner=finance
            )
            BriefVersion.objects.create(
                brief=brief, number=1, state="draft", mapping={}, command_schema={}
            )

    return build


LIST_PAGES = [
    ("syncflows:deliveries", "", "delivery-results"),
    ("syncflows:deliveries", "?view=quarantined", "delivery-results"),
    ("syncflows:events", "", "event-results"),
    ("syncflows:commands", "", "command-results"),
    ("syncflows:briefs", "", "brief-results"),
    ("exceptions:case-list", "", "case-results"),
    ("exceptions:my-work", "", "case-results"),
]


def parse(response):
    return html.fromstring(response.content.decode())


def main_nav(document):
    return document.xpath('//nav[@aria-label="Main"]')


def element_by_id(document, element_id: str):
    return document.xpath(f'//*[@id="{element_id}"]')


# Anonymous users.


@pytest.fixture
def all_page_urls(make_rows):
    make_rows(1)
    delivery = Delivery.objects.get()
    command = Command.objects.get()
    case = ExceptionCase.objects.get()
    return [
        reverse("syncflows:home"),
        reverse("syncflows:deliveries"),
        reverse("syncflows:delivery-detail", args=[delivery.pk]),
        reverse("syncflows:events"),
        reverse("syncflows:commands"),
        reverse("syncflows:command-detail", args=[command.pk]),
        reverse("syncflows:trace") + "?q=900000",
        reverse("syncflows:briefs"),
        reverse("reporting:dashboard"),
        reverse("exceptions:case-list"),
        reverse("exceptions:my-work"),
        reverse("exceptions:case-detail", args=[case.pk]),
    ]


def test_pages_redirect_anonymous_to_login(client, all_page_urls):
    login = reverse("login")
    for url in all_page_urls:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(f"{login}?next="), url


def test_login_page_has_labelled_fields(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    document = parse(response)
    assert document.xpath('//label[@for="id_username"]')
    assert document.xpath('//label[@for="id_password"]')
    assert not main_nav(document)


def test_login_error_is_shown(client, viewer):
    response = client.post(
        reverse("login"), {"username": "vera.viewer", "password": "wrong"}
    )
    assert response.status_code == 200
    alert = parse(response).xpath('//*[@role="alert"]')
    assert len(alert) == 1
    assert "correct username and password" in alert[0].text_content()


def test_login_then_home_goes_to_my_work(client, viewer):
    response = client.post(
        reverse("login"), {"username": "vera.viewer", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("syncflows:home")
    response = client.get(reverse("syncflows:home"))
    assert response["Location"] == reverse("exceptions:my-work")


# A logged-in Viewer reads every page.


def test_viewer_sees_every_page(client, viewer, all_page_urls):
    client_for(client, viewer)
    for url in all_page_urls[1:]:
        response = client.get(url)
        assert response.status_code == 200, url
        document = parse(response)
        assert len(main_nav(document)) == 1, url
        assert document.xpath("//h1"), url


def test_nav_shows_admin_link_only_to_admins(client, viewer, admin_user):
    client_for(client, viewer)
    document = parse(client.get(reverse("syncflows:briefs")))
    assert not document.xpath('//nav[@aria-label="Main"]//a[text()="Admin"]')

    client_for(client, admin_user)
    document = parse(client.get(reverse("syncflows:briefs")))
    links = document.xpath('//nav[@aria-label="Main"]//a[text()="Admin"]')
    assert [link.get("href") for link in links] == [reverse("admin:index")]


def test_base_layout_has_logout_form_and_skip_link(client, viewer):
    client_for(client, viewer)
    document = parse(client.get(reverse("syncflows:briefs")))
    logout = document.xpath('//form[@method="post"]')
    assert [form.get("action") for form in logout] == [reverse("logout")]
    assert document.xpath('//a[@class="skip-link"]/@href') == ["#content"]
    scripts = document.xpath("//script/@src")
    assert scripts == ["/static/vendor/htmx/htmx.min.js", "/static/js/meshline.js"]


# HTMX requests get only the table partial.


@pytest.mark.parametrize(("name", "query", "table_id"), LIST_PAGES)
def test_htmx_request_returns_partial(client, viewer, make_rows, name, query, table_id):
    make_rows(3)
    viewer.groups.add(Group.objects.get(name=FINANCE))
    client_for(client, viewer)
    response = client.get(reverse(name) + query, headers={"HX-Request": "true"})
    assert response.status_code == 200
    template_names = [template.name for template in response.templates]
    assert "base.html" not in template_names
    assert any("/partials/" in name for name in template_names)
    assert "HX-Request" in response["Vary"]
    document = parse(response)
    assert not main_nav(document)
    assert len(element_by_id(document, table_id)) == 1
    assert document.xpath(f'//*[@id="{table_id}"]//table')


@pytest.mark.parametrize(("name", "query", "table_id"), LIST_PAGES)
def test_full_page_wraps_partial(client, viewer, make_rows, name, query, table_id):
    make_rows(3)
    viewer.groups.add(Group.objects.get(name=FINANCE))
    client_for(client, viewer)
    response = client.get(reverse(name) + query)
    template_names = [template.name for template in response.templates]
    assert "base.html" in template_names
    document = parse(response)
    assert len(main_nav(document)) == 1
    assert len(element_by_id(document, table_id)) == 1
    assert not document.xpath("//*[@hx-swap-oob]")


def test_partial_updates_count_out_of_band(client, viewer, make_rows):
    make_rows(3)
    client_for(client, viewer)
    response = client.get(
        reverse("syncflows:deliveries"), headers={"HX-Request": "true"}
    )
    counts = parse(response).xpath('//*[@id="delivery-count"]')
    assert len(counts) == 1
    assert counts[0].get("hx-swap-oob") == "true"
    assert counts[0].text_content().strip() == "3 deliveries"


def test_filter_change_narrows_partial(client, viewer, make_rows):
    make_rows(4)
    Command.objects.filter(idempotency_key="key-2").update(state="failed")
    client_for(client, viewer)
    response = client.get(
        reverse("syncflows:commands") + "?state=failed", headers={"HX-Request": "true"}
    )
    document = parse(response)
    rows = document.xpath('//*[@id="command-results"]//tbody/tr')
    assert len(rows) == 1
    count = document.xpath('//*[@id="command-count"]')[0].text_content().strip()
    assert count == "1 command"


def test_filter_form_targets_table(client, viewer, make_rows):
    make_rows(1)
    client_for(client, viewer)
    document = parse(client.get(reverse("exceptions:case-list")))
    forms = document.xpath('//form[@role="search"]')
    assert len(forms) == 1
    assert forms[0].get("hx-get") == reverse("exceptions:case-list")
    assert forms[0].get("hx-target") == "#case-results"
    assert forms[0].get("hx-push-url") == "true"
    labels = forms[0].xpath(".//label/@for")
    inputs = forms[0].xpath(".//*[self::input or self::select][@id]/@id")
    assert "id_state" in labels
    assert "id_state" in inputs


def test_range_filter_inputs_are_labelled(client, viewer):
    client_for(client, viewer)
    document = parse(client.get(reverse("syncflows:events")))
    names = document.xpath('//input[starts-with(@name, "received_at_")]/@aria-label')
    assert names == ["Received from (UTC)", "Received to (UTC)"]


def test_history_restore_request_gets_full_page(client, viewer, make_rows):
    make_rows(1)
    client_for(client, viewer)
    response = client.get(
        reverse("syncflows:events"),
        headers={"HX-Request": "true", "HX-History-Restore-Request": "true"},
    )
    assert len(main_nav(parse(response))) == 1


def test_deliveries_views_filter_by_status(client, viewer, make_rows):
    make_rows(6)
    client_for(client, viewer)
    quarantined = client.get(reverse("syncflows:deliveries") + "?view=quarantined")
    rows = parse(quarantined).xpath('//*[@id="delivery-results"]//tbody/tr')
    assert len(rows) == 3
    rejected = client.get(reverse("syncflows:deliveries") + "?view=rejected")
    assert parse(rejected).xpath('//*[@id="delivery-results"]//tbody/tr') == []


def test_pagination_splits_pages(client, viewer, make_rows):
    make_rows(55)
    client_for(client, viewer)
    first = parse(client.get(reverse("syncflows:events")))
    assert len(first.xpath('//*[@id="event-results"]//tbody/tr')) == 50
    second = parse(client.get(reverse("syncflows:events") + "?page=2"))
    assert len(second.xpath('//*[@id="event-results"]//tbody/tr')) == 5
    assert "Page 2 of 2" in second.xpath('//nav[@aria-label="Pages"]')[0].text_content()


# List pages run a fixed number of queries, whatever the number of rows.


def count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as context:
        response = client.get(url)
    assert response.status_code == 200
    return len(context.captured_queries)


# Measured on these pages: session, user and the user's groups (3 queries),
# then the page's count and rows (2). Each model-choice filter adds one query
# for its choices (connector, destination, lane, owner group), and the briefs
# page adds one for the version prefetch. The exception queues add one for
# the lane links above the table, and one for the assignee choices of the
# bulk form, which only users who may triage see (my work here).
MAX_LIST_QUERIES = {
    "syncflows:deliveries": 6,
    "syncflows:events": 6,
    "syncflows:commands": 6,
    "syncflows:briefs": 6,
    "exceptions:case-list": 9,
    "exceptions:my-work": 10,
}


@pytest.mark.parametrize(("name", "query", "table_id"), LIST_PAGES)
def test_list_query_count_is_constant(
    client, viewer, make_rows, django_assert_max_num_queries, name, query, table_id
):
    client_for(client, viewer)
    url = reverse(name) + query
    if name == "exceptions:my-work":
        viewer.groups.add(Group.objects.get(name=FINANCE))

    make_rows(3)
    few = count_queries(client, url)
    make_rows(27, start=3)
    many = count_queries(client, url)

    assert few == many
    with django_assert_max_num_queries(MAX_LIST_QUERIES[name]):
        client.get(url)


def test_list_pages_show_all_rows_for_pin(client, viewer, make_rows):
    """The query-count pin is only meaningful if the 30 rows are on the page."""
    make_rows(30)
    viewer.groups.add(Group.objects.get(name=FINANCE))
    client_for(client, viewer)
    for name, query, table_id in LIST_PAGES:
        if query:
            continue
        document = parse(client.get(reverse(name)))
        rows = document.xpath(f'//*[@id="{table_id}"]//tbody/tr')
        expected = 31 if name == "syncflows:briefs" else 30
        assert len(rows) == expected, name


# Delivery detail and the raw body.


def test_raw_body_hidden_from_viewer(client, viewer, connector):
    delivery = make_delivery(connector, 1)
    client_for(client, viewer)
    response = client.get(reverse("syncflows:delivery-detail", args=[delivery.pk]))
    text = response.content.decode()
    assert "jane.doe@example.com" not in text
    assert "only the Admin and Triage Lead roles" in text


@pytest.mark.parametrize("role", [TRIAGE_LEAD, ADMIN])
def test_raw_body_shown_to_privileged_roles(client, connector, role):
    delivery = make_delivery(connector, 1)
    client_for(client, make_user("privileged", role))
    response = client.get(reverse("syncflows:delivery-detail", args=[delivery.pk]))
    body = parse(response).xpath('//pre[@data-testid="raw-body"]')
    assert len(body) == 1
    assert '"email": "jane.doe@example.com"' in body[0].text_content()


def test_delivery_detail_lists_headers_and_events(client, viewer, connector):
    delivery = make_delivery(connector, 7)
    make_event(delivery, 7)
    client_for(client, viewer)
    document = parse(
        client.get(reverse("syncflows:delivery-detail", args=[delivery.pk]))
    )
    text = document.text_content()
    assert "X-HubSpot-Signature-v3" in text
    assert f"{len(RAW_BODY)} bytes" in text
    links = document.xpath('//a[contains(@href, "/trace/?q=")]/@href')
    assert links == ["/trace/?q=hubspot-eu%3Adeal%3A900007"]


# Actions: refused to a Viewer, refusal messages for a wrong state.


def test_replay_button_only_for_allowed_roles(client, viewer, triage_lead, connector):
    make_delivery(connector, 1, status="quarantined")
    url = reverse("syncflows:deliveries")

    client_for(client, viewer)
    assert not parse(client.get(url)).xpath('//button[text()="Replay"]')
    client_for(client, triage_lead)
    assert len(parse(client.get(url)).xpath('//button[text()="Replay"]')) == 1


def test_replay_refused_to_viewer(client, viewer, connector):
    delivery = make_delivery(connector, 1, status="quarantined")
    client_for(client, viewer)
    response = client.post(reverse("syncflows:delivery-replay", args=[delivery.pk]))
    assert response.status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == "quarantined"


def test_replay_of_accepted_delivery_shows_refusal(client, triage_lead, connector):
    delivery = make_delivery(connector, 1, status="accepted")
    client_for(client, triage_lead)
    response = client.post(
        reverse("syncflows:delivery-replay", args=[delivery.pk]), follow=True
    )
    assert response.status_code == 200
    messages = [str(message) for message in response.context["messages"]]
    assert messages == [
        f"Delivery {delivery.pk} is accepted; only rejected or quarantined "
        "deliveries can be replayed."
    ]


CASE_ACTIONS = [
    ("exceptions:case-retry", {}),
    ("exceptions:case-replay", {}),
    ("exceptions:case-acknowledge", {}),
    ("exceptions:case-assign-to-me", {}),
    ("exceptions:case-resolve", {"note": "Added the SKU."}),
    ("exceptions:case-dismiss", {"reason": "Test deal."}),
]


@pytest.fixture
def open_case(make_rows):
    make_rows(1)
    return ExceptionCase.objects.get()


@pytest.mark.parametrize(("name", "data"), CASE_ACTIONS)
def test_case_actions_refused_to_viewer(client, viewer, open_case, name, data):
    client_for(client, viewer)
    response = client.post(reverse(name, args=[open_case.pk]), data)
    assert response.status_code == 403
    open_case.refresh_from_db()
    assert open_case.state == "open"
    assert CaseHistory.objects.count() == 0


def test_case_actions_need_post(client, finance, open_case):
    client_for(client, finance)
    response = client.get(reverse("exceptions:case-acknowledge", args=[open_case.pk]))
    assert response.status_code == 405


def test_viewer_sees_no_action_buttons(client, viewer, open_case):
    client_for(client, viewer)
    response = client.get(reverse("exceptions:case-detail", args=[open_case.pk]))
    document = parse(response)
    assert not document.xpath('//form[contains(@action, "/acknowledge/")]')
    assert "read this case but not act on it" in document.text_content()


def test_finance_sees_triage_buttons(client, finance, open_case):
    client_for(client, finance)
    document = parse(client.get(reverse("exceptions:case-detail", args=[open_case.pk])))
    actions = sorted(
        action.rstrip("/").rsplit("/", 1)[-1]
        for action in document.xpath('//main//form[@method="post"]/@action')
    )
    assert actions == ["acknowledge", "assign", "dismiss", "replay", "resolve", "retry"]


def test_acknowledge_by_finance(client, finance, open_case):
    client_for(client, finance)
    response = client.post(
        reverse("exceptions:case-acknowledge", args=[open_case.pk]), follow=True
    )
    open_case.refresh_from_db()
    assert open_case.state == "acknowledged"
    messages = [str(message) for message in response.context["messages"]]
    assert messages == [f"Case {open_case.pk} is acknowledged."]
    history = parse(response).xpath('//*[@id="history-heading"]/..//tbody/tr')
    assert len(history) == 1


def test_action_on_closed_case_shows_refusal(client, finance, open_case):
    ExceptionCase.objects.filter(pk=open_case.pk).update(state="resolved")
    client_for(client, finance)
    response = client.post(
        reverse("exceptions:case-acknowledge", args=[open_case.pk]), follow=True
    )
    messages = [str(message) for message in response.context["messages"]]
    assert messages == [
        f"Case {open_case.pk} is resolved, so it cannot be acknowledged."
    ]
    errors = parse(response).xpath('//li[contains(@class, "message-error")]')
    assert len(errors) == 1


def test_resolve_without_note_shows_field_error(client, finance, open_case):
    client_for(client, finance)
    response = client.post(
        reverse("exceptions:case-resolve", args=[open_case.pk]), {"note": "  "}
    )
    assert response.status_code == 400
    document = parse(response)
    error = document.xpath('//*[@id="id_note_error"]')
    assert len(error) == 1
    assert error[0].text_content() == "Write what was fixed before resolving."
    textarea = document.xpath('//textarea[@id="id_note"]')[0]
    assert textarea.get("aria-invalid") == "true"
    open_case.refresh_from_db()
    assert open_case.state == "open"


def test_resolve_with_note(client, finance, open_case):
    client_for(client, finance)
    response = client.post(
        reverse("exceptions:case-resolve", args=[open_case.pk]), {"note": "Added SKU."}
    )
    assert response.status_code == 302
    open_case.refresh_from_db()
    assert open_case.state == "resolved"


# Case pages.


def test_case_detail_shows_detail_table(client, viewer, open_case):
    open_case.detail["lines"] = [{"sku": "WIDGET-9"}]
    open_case.save(update_fields=["detail"])
    client_for(client, viewer)
    document = parse(client.get(reverse("exceptions:case-detail", args=[open_case.pk])))
    rows = document.xpath('//table[contains(@class, "detail-table")]//tbody/tr')
    cells = [
        (row.xpath("./th")[0].text_content(), row.xpath("./td")[0].text_content())
        for row in rows
    ]
    assert cells == [
        ("key", "WIDGET-9"),
        ("line.quantity", "2"),
        ("lines", '[\n  {\n    "sku": "WIDGET-9"\n  }\n]'),
        ("table", "sku-map"),
    ]
    assert len(rows[2].xpath("./td/pre")) == 1
    trace = document.xpath('//a[starts-with(@href, "/trace/")]/@href')
    assert "/trace/?q=hubspot-eu%3Adeal%3A900000" in trace


def test_my_work_lists_user_and_group_cases(client, make_rows, lane):
    make_rows(2)
    pricing_lane = Lane.objects.create(
        slug="pricing",
        name="Pricing",
        owner_group=Group.objects.get(name="Pricing Ops"),
    )
    make_case(pricing_lane, "hubspot:deal:1", owner_group=pricing_lane.owner_group)
    closed = make_case(lane, "hubspot:deal:2", state="resolved")
    member = make_user("fred.finance", FINANCE)
    mine = make_case(lane, "hubspot:deal:3", owner_group=None, owner_user=member)
    client_for(client, member)

    document = parse(client.get(reverse("exceptions:my-work")))
    links = document.xpath('//*[@id="case-results"]//tbody/tr/td[1]/a/text()')
    shown = sorted(int(link.lstrip("#")) for link in links)
    group_cases = ExceptionCase.objects.filter(
        owner_group__name=FINANCE, state="open"
    ).values_list("pk", flat=True)
    assert shown == sorted([*group_cases, mine.pk])
    assert closed.pk not in shown
    assert len(shown) == 3


# Trace, briefs and dashboards.


def test_trace_shows_timeline_for_one_match(client, viewer, make_rows):
    make_rows(1)
    record_key = "hubspot-eu:deal:900000"
    LedgerEntry.objects.create(
        step="transform",
        record_key=record_key,
        message="Mapped deal 900000 to a sales order.",
        payload_before={"amount": "1200.00"},
        payload_after={"total": "1200.00"},
    )
    client_for(client, viewer)
    document = parse(client.get(reverse("syncflows:trace") + "?q=900000"))
    steps = document.xpath('//ol[@class="timeline"]/li')
    assert len(steps) == 1
    assert "Transformed" in steps[0].text_content()
    assert len(steps[0].xpath(".//details//pre")) == 2
    results = element_by_id(document, "trace-results")[0]
    commands = results.xpath('.//table//a[starts-with(@href, "/commands/")]/@href')
    assert commands == [f"/commands/{Command.objects.get().pk}/"]
    cases = results.xpath('.//table//a[starts-with(@href, "/exceptions/")]/@href')
    assert cases == [f"/exceptions/{ExceptionCase.objects.get().pk}/"]


def test_trace_lists_keys_for_many_matches(client, viewer, connector):
    record = make_record(connector, 1)
    LedgerEntry.objects.create(
        step="receive", record_key=record.record_key, message="x"
    )
    destination = Destination.objects.create(slug="d", name="d", adapter="sandbox")
    version = BriefVersion.objects.create(
        brief=Brief.objects.create(slug="b", name="b", intent="x"),
        number=1,
        mapping={},
        command_schema={},
    )
    other = make_record(connector, 2)
    make_command(other, destination, version, 1, erp_document_number="900001")
    client_for(client, viewer)
    document = parse(client.get(reverse("syncflows:trace") + "?q=900001"))
    keys = document.xpath('//ul[@class="key-list"]//code/text()')
    assert keys == ["hubspot-eu:deal:900001", "hubspot-eu:deal:900002"]
    assert not document.xpath('//ol[@class="timeline"]')


def test_trace_reports_no_match(client, viewer):
    client_for(client, viewer)
    response = client.get(reverse("syncflows:trace") + "?q=nothing-here")
    assert "No record matches “nothing-here”" in response.content.decode()


def test_trace_partial_for_htmx(client, viewer):
    client_for(client, viewer)
    response = client.get(
        reverse("syncflows:trace") + "?q=nothing", headers={"HX-Request": "true"}
    )
    document = parse(response)
    assert not main_nav(document)
    assert len(element_by_id(document, "trace-results")) == 1


def test_briefs_show_active_and_latest_version(client, viewer, brief_version):
    BriefVersion.objects.create(
        brief=brief_version.brief,
        number=2,
        state="in_review",
        mapping={},
        command_schema={},
    )
    client_for(client, viewer)
    document = parse(client.get(reverse("syncflows:briefs")))
    cells = document.xpath('//*[@id="brief-results"]//tbody/tr[1]/td')
    assert cells[1].text_content().strip().startswith("v1")
    assert " ".join(cells[2].text_content().split()) == "v2 In review"
    assert cells[3].text_content().strip() == "fiona.finance"
    assert " ".join(cells[4].text_content().split()) == "discounts CPQ"


def test_old_dashboards_url_redirects(client, viewer):
    client_for(client, viewer)
    response = client.get(reverse("syncflows:dashboards") + "?segment=keyword")
    assert response.status_code == 302
    assert response["Location"] == reverse("reporting:dashboard") + "?segment=keyword"
