"""Every exception page and endpoint for an anonymous user, a wrong role and a
right role."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from exceptions.models import BulkAction, ExceptionCase, Lane
from meshline.roles import FINANCE, TRIAGE_LEAD, VIEWER
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def case():
    lane = Lane.objects.create(
        slug="finance", name="Finance", owner_group=Group.objects.get(name=FINANCE)
    )
    now = timezone.now()
    return ExceptionCase.objects.create(
        reason_code="erp_rejected",
        title="The ERP rejected the document",
        message="Customer blocked.",
        lane=lane,
        owner_group=lane.owner_group,
        record_key="hubspot:deal:1",
        opened_at=now,
        due_at=now + timedelta(hours=4),
    )


@pytest.fixture
def people():
    return {
        "nobody": make_user("nora"),
        "viewer": make_user("vic", VIEWER),
        "triage": make_user("tess", TRIAGE_LEAD),
    }


# (name, args, wrong role, right role): every reader needs a role; the pages
# are for any role, the API too.
READ_PAGES = [
    ("exceptions:case-list", False),
    ("exceptions:my-work", False),
    ("exceptions:lane", "lane"),
    ("exceptions:counts", False),
    ("exceptions:export", False),
    ("exceptions:case-detail", "case"),
]

# (name, data): a Viewer may not take them; a Triage Lead may, and is sent
# back to the case (with a refusal message when the state does not allow it).
ACTIONS = [
    ("exceptions:case-retry", {}),
    ("exceptions:case-replay", {}),
    ("exceptions:case-acknowledge", {}),
    ("exceptions:case-assign-to-me", {}),
    ("exceptions:case-assign", "assign"),
    ("exceptions:case-compensate", {"note": "Wrong customer."}),
    ("exceptions:case-fix-lookup", {"key": "SKU-1", "value": "ERP-1"}),
    ("exceptions:case-fix-customer", {"name": "Example Ltd"}),
    ("exceptions:case-resolve", {"note": "Fixed."}),
    ("exceptions:case-dismiss", {"reason": "Test deal."}),
]


def page_url(name, arg, case):
    if arg == "lane":
        return reverse(name, args=[case.lane.slug])
    if arg == "case":
        return reverse(name, args=[case.pk])
    return reverse(name)


@pytest.mark.parametrize(("name", "arg"), READ_PAGES)
def test_read_page_matrix(client, case, people, name, arg):
    url = page_url(name, arg, case)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))

    client.force_login(people["nobody"])
    assert client.get(url).status_code == 403

    client.force_login(people["viewer"])
    assert client.get(url).status_code == 200


@pytest.mark.parametrize(("name", "data"), ACTIONS)
def test_action_matrix(client, case, people, name, data):
    url = reverse(name, args=[case.pk])
    if data == "assign":
        data = {"user": people["triage"].pk}
    response = client.post(url, data)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))

    client.force_login(people["viewer"])
    assert client.post(url, data).status_code == 403
    case.refresh_from_db()
    assert case.history.count() == 0

    client.force_login(people["triage"])
    response = client.post(url, data)
    assert response.status_code == 302
    assert response["Location"] == reverse("exceptions:case-detail", args=[case.pk])


def test_bulk_matrix(client, case, people):
    url = reverse("exceptions:bulk")
    data = {
        "action": "resolve",
        "case": [case.pk],
        "note": "Done.",
        "selection": "selected",
    }
    assert client.post(url, data).status_code == 302
    client.force_login(people["viewer"])
    assert client.post(url, data).status_code == 403
    client.force_login(people["triage"])
    response = client.post(url, data)
    assert response.status_code == 200
    assert "Resolve 1 case?" in response.content.decode()


def test_bulk_progress_matrix(client, case, people):
    bulk = BulkAction.objects.create(
        action="retry", requested_by=people["triage"], total=1
    )
    url = reverse("exceptions:bulk-progress", args=[bulk.pk])
    assert client.get(url).status_code == 302
    client.force_login(people["viewer"])
    assert client.get(url).status_code == 403
    client.force_login(people["triage"])
    assert client.get(url).status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/cases/", "case"])
def test_api_matrix(client, case, people, path):
    url = f"/api/v1/cases/{case.pk}/" if path == "case" else path
    assert client.get(url).status_code == 403
    client.force_login(people["nobody"])
    assert client.get(url).status_code == 403
    client.force_login(people["viewer"])
    assert client.get(url).status_code == 200


@pytest.mark.parametrize(("name", "data"), ACTIONS)
def test_actions_need_post(client, case, people, name, data):
    client.force_login(people["triage"])
    assert client.get(reverse(name, args=[case.pk])).status_code == 405
