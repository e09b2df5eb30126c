"""Escalation: reminder, reassignment at breach, executive notification; each
step fires once per case and level, even with two workers at once."""

import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection
from django.utils import timezone

from exceptions.models import CaseHistory, ExceptionCase, Lane, Notification
from exceptions.services.escalation import run_escalation
from exceptions.tasks import escalation_task
from meshline.roles import ALL_ROLES, FINANCE, TRIAGE_LEAD
from tests.conftest import make_user


@pytest.fixture
def escalation_settings(settings):
    # Transaction tests flush the groups that a migration created.
    for name in ALL_ROLES:
        Group.objects.get_or_create(name=name)
    settings.MESHLINE_REMINDER_BEFORE_MINUTES = 60
    settings.MESHLINE_EXECUTIVE_AFTER_MINUTES = 120
    settings.MESHLINE_EXECUTIVE_EMAILS = ["cfo@example.com"]
    settings.MESHLINE_SLACK_WEBHOOK_URL = ""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    return settings


def make_case(owner, due_in_minutes: float, record="hubspot:deal:1") -> ExceptionCase:
    lane = Lane.objects.get_or_create(
        slug="finance",
        defaults={"name": "Finance", "owner_group": Group.objects.get(name=FINANCE)},
    )[0]
    now = timezone.now()
    return ExceptionCase.objects.create(
        reason_code="erp_rejected",
        title="The ERP rejected the document",
        message="Customer blocked.",
        lane=lane,
        owner_user=owner,
        owner_group=lane.owner_group,
        state="assigned",
        record_key=record,
        opened_at=now - timedelta(hours=4),
        due_at=now + timedelta(minutes=due_in_minutes),
    )


def actions_of(case) -> list[str]:
    return list(
        CaseHistory.objects.filter(case=case)
        .order_by("id")
        .values_list("action", flat=True)
    )


@pytest.fixture
def escalate(django_capture_on_commit_callbacks):
    """Run the escalation and the notifications it sends after the commit."""

    def run(now=None):
        with django_capture_on_commit_callbacks(execute=True):
            return run_escalation(now)

    return run


@pytest.mark.django_db
def test_each_level_fires_once_in_order(escalation_settings, escalate):
    fiona = make_user("fiona", FINANCE)
    make_user("tess", TRIAGE_LEAD)
    case = make_case(fiona, due_in_minutes=30)
    now = timezone.now()

    assert escalate(now) == {"reminder": 1, "reassigned": 0, "executive": 0}
    assert escalate(now) == {"reminder": 0, "reassigned": 0, "executive": 0}
    assert [m.to for m in mail.outbox] == [["fiona@example.com"]]
    assert "due soon" in mail.outbox[0].subject
    assert f"/exceptions/{case.pk}/" in mail.outbox[0].body
    assert "/trace/?q=hubspot%3Adeal%3A1" in mail.outbox[0].body

    breach = now + timedelta(minutes=31)
    assert escalate(breach) == {"reminder": 0, "reassigned": 1, "executive": 0}
    case.refresh_from_db()
    assert case.escalation_level == 2
    assert case.owner_user is None
    assert case.owner_group.name == TRIAGE_LEAD
    assert case.state == "open"
    assert mail.outbox[-1].to == ["tess@example.com"]

    late = now + timedelta(minutes=30 + 121)
    assert escalate(late) == {"reminder": 0, "reassigned": 0, "executive": 1}
    assert escalate(late) == {"reminder": 0, "reassigned": 0, "executive": 0}
    assert mail.outbox[-1].to == ["cfo@example.com"]
    assert actions_of(case) == ["reminder_sent", "reassigned", "executive_notified"]
    assert len(mail.outbox) == 3


@pytest.mark.django_db
def test_breached_case_skips_reminder(escalation_settings, escalate):
    case = make_case(make_user("fiona", FINANCE), due_in_minutes=-5)
    assert escalate() == {"reminder": 0, "reassigned": 1, "executive": 0}
    assert actions_of(case) == ["reassigned"]


@pytest.mark.django_db
def test_closed_case_never_escalates(escalation_settings):
    case = make_case(make_user("fiona", FINANCE), due_in_minutes=-500)
    ExceptionCase.objects.filter(pk=case.pk).update(state="resolved")
    assert escalation_task() == {
        "reminder": 0, "reassigned": 0, "executive": 0, "notifications_tried": 0,
    }  # fmt: skip


def run_in_threads(count: int, target, *args) -> list:
    """Run ``target`` in ``count`` threads that start together; return results."""
    barrier = threading.Barrier(count)
    results, errors = [], []

    def work():
        try:
            barrier.wait()
            results.append(target(*args))
        except Exception as exc:  # reported by the assert below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize(
    ("due_in_minutes", "offset_minutes", "level", "action"),
    [
        (30, 0, "reminder", "reminder_sent"),
        (-5, 0, "reassigned", "reassigned"),
        (-5, 200, "executive", "executive_notified"),
    ],
)
def test_level_fires_once_with_two_workers(
    escalation_settings, due_in_minutes, offset_minutes, level, action
):
    fiona = make_user("fiona", FINANCE)
    make_user("tess", TRIAGE_LEAD)
    cases = [
        make_case(fiona, due_in_minutes, record=f"hubspot:deal:{i}") for i in range(20)
    ]
    if level == "executive":
        ExceptionCase.objects.update(escalation_level=2)
    now = timezone.now() + timedelta(minutes=offset_minutes)

    results = run_in_threads(2, run_escalation, now)

    assert sum(result[level] for result in results) == 20
    for case in cases:
        assert actions_of(case) == [action]
    assert Notification.objects.filter(event=level).count() == 20
    assert (
        ExceptionCase.objects.exclude(
            escalation_level={"reminder": 1, "reassigned": 2, "executive": 3}[level]
        ).count()
        == 0
    )
