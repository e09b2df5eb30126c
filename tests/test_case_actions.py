"""Case actions by role and state, fixes, compensation, bulk actions and
notifications."""

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from exceptions.demo import load_demo_lanes
from exceptions.models import BulkAction, CaseHistory, ExceptionCase, Lane, Notification
from exceptions.notifications import deliver, notify_case, retry_due_notifications
from exceptions.services import actions, fixes
from exceptions.services.bulk import start_bulk_action
from meshline.roles import FINANCE, PRICING_OPS, SALES_OPS, TRIAGE_LEAD, VIEWER
from syncflows.models import Command, LedgerEntry, SandboxOrder, SourceRecord
from tests.conftest import load_case, make_user

pytestmark = pytest.mark.django_db

SECRET = "whsec_deals"


@pytest.fixture
def deals(demo, settings):
    """The demo, its lanes and a generic connector of plain JSON deals."""
    from syncflows.demo import GENERIC_MAPPING, ORDER_SCHEMA, TOTAL_MATCHES_CRM
    from syncflows.models import Brief, BriefVersion, Connector, Trigger
    from syncflows.services.configuration import save_trigger

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.MESHLINE_SLACK_WEBHOOK_URL = ""
    load_demo_lanes()
    connector = Connector.objects.create(
        slug="deals-json",
        name="Deals as JSON",
        kind="generic",
        secrets=[SECRET],
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
    return connector


def c07_deal(**changes) -> dict:
    deal = dict(load_case("C07-missing-product-mapping")["input"]["closed_deal"])
    return {**deal, "customer": "pipedrive:organization:201", **changes}


@pytest.fixture
def mapping_case(deals, send):
    assert send.generic(c07_deal(), secret=SECRET, slug="deals-json").status_code == 200
    return ExceptionCase.objects.get(reason_code="mapping_missing")


@pytest.fixture
def users():
    return {
        "finance": make_user("fiona", FINANCE),
        "pricing": make_user("pia", PRICING_OPS),
        "sales": make_user("sam", SALES_OPS),
        "triage": make_user("tess", TRIAGE_LEAD),
        "viewer": make_user("vic", VIEWER),
    }


# Which roles may take each action, from meshline.roles.POLICY.
ROLE_MATRIX = [
    ("acknowledge", {"finance", "pricing", "triage"}),
    ("assign", {"finance", "pricing", "triage"}),
    ("resolve", {"finance", "pricing", "triage"}),
    ("dismiss", {"finance", "pricing", "triage"}),
    ("retry", {"finance", "triage"}),
    ("replay", {"finance", "sales", "triage"}),
]


def perform(name, case, user, assignee):
    calls = {
        "acknowledge": lambda: actions.acknowledge_case(case, acting_user=user),
        "assign": lambda: actions.assign_case(case, acting_user=user, user=assignee),
        "resolve": lambda: actions.resolve_case(case, acting_user=user, note="Fixed."),
        "dismiss": lambda: actions.dismiss_case(
            case, acting_user=user, reason="Test deal."
        ),
        "retry": lambda: actions.retry_case(case, acting_user=user),
        "replay": lambda: actions.replay_case(case, acting_user=user),
    }
    return calls[name]()


def clone(case) -> ExceptionCase:
    copy = ExceptionCase.objects.get(pk=case.pk)
    copy.pk = None
    copy.save()
    return copy


@pytest.mark.parametrize(("name", "allowed"), ROLE_MATRIX)
def test_action_by_role(
    mapping_case, users, name, allowed, django_capture_on_commit_callbacks
):
    for role, user in users.items():
        case = clone(mapping_case)
        assignee = users["triage"] if role != "triage" else users["finance"]
        if role not in allowed:
            with pytest.raises(PermissionDenied):
                perform(name, case, user, assignee)
            assert case.history.count() == 0, (name, role)
            continue
        with django_capture_on_commit_callbacks(execute=True):
            perform(name, case, user, assignee)
        assert case.history.count() == 1, (name, role)
        assert LedgerEntry.objects.filter(case_id=case.pk, step="action").count() == 1


@pytest.mark.parametrize(
    "name", ["acknowledge", "assign", "resolve", "dismiss", "retry", "replay"]
)
def test_action_refused_on_closed_case(mapping_case, users, name):
    ExceptionCase.objects.filter(pk=mapping_case.pk).update(state="dismissed")
    case = ExceptionCase.objects.get(pk=mapping_case.pk)
    with pytest.raises(actions.ActionRefused) as refusal:
        perform(name, case, users["triage"], users["finance"])
    if name != "replay":
        assert refusal.value.message.startswith(
            f"Case {case.pk} is dismissed, so it cannot be"
        )
    assert CaseHistory.objects.filter(case=case).exclude(action="opened").count() == 0


def test_acknowledge_twice_refused(mapping_case, users):
    actions.acknowledge_case(mapping_case, acting_user=users["finance"])
    with pytest.raises(actions.ActionRefused) as refusal:
        actions.acknowledge_case(mapping_case, acting_user=users["finance"])
    assert refusal.value.message == f"Case {mapping_case.pk} is already acknowledged."


def test_assign_to_viewer_refused(mapping_case, users):
    with pytest.raises(actions.ActionRefused) as refusal:
        actions.assign_case(
            mapping_case, acting_user=users["triage"], user=users["viewer"]
        )
    assert refusal.value.message.startswith("vic cannot work on cases")


def test_assign_to_group_reopens(mapping_case, users):
    actions.assign_case(
        mapping_case, acting_user=users["triage"], user=users["finance"]
    )
    group = Group.objects.get(name=PRICING_OPS)
    case = actions.assign_case(mapping_case, acting_user=users["triage"], group=group)
    assert case.state == "open"
    assert case.owner_user is None
    assert case.owner_group == group


def test_assign_notifies_new_owner(
    mapping_case, users, django_capture_on_commit_callbacks
):
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        actions.assign_case(
            mapping_case, acting_user=users["triage"], user=users["finance"]
        )
    assert [message.to for message in mail.outbox] == [["fiona@example.com"]]
    assert mail.outbox[0].subject.startswith(
        f"Case {mapping_case.pk} was assigned to you"
    )


def test_resolve_needs_note(mapping_case, users):
    with pytest.raises(actions.ActionRefused) as refusal:
        actions.resolve_case(mapping_case, acting_user=users["finance"], note="  ")
    assert refusal.value.message == "The resolution note is missing: describe how the case was resolved."


def test_retry_refused_while_command_pending(deals, send, users):
    from syncflows.models import SandboxCustomer

    SandboxCustomer.objects.filter(reference="pipedrive:organization:201").delete()
    send.generic(
        c07_deal(line_items=c07_deal()["line_items"][:1], total="1000.00"),
        secret=SECRET,
        slug="deals-json",
    )
    case = ExceptionCase.objects.get(reason_code="master_data_missing")
    Command.objects.filter(pk=case.command_id).update(state="pending")
    with pytest.raises(actions.ActionRefused) as refusal:
        actions.retry_case(case, acting_user=users["finance"])
    assert refusal.value.message == (
        f"Command {case.command_id} is pending; only a failed command can be retried."
    )


def test_fix_mapping_then_retry(
    mapping_case, users, django_capture_on_commit_callbacks
):
    assert fixes.fix_for(mapping_case)["key"] == "FAKE-SKU-404"
    with django_capture_on_commit_callbacks(execute=True):
        fixes.add_lookup_row_and_retry(
            mapping_case,
            acting_user=users["finance"],
            key="FAKE-SKU-404",
            value="FAKE-SKU-200",
        )
    order = SandboxOrder.objects.get()
    assert [line["sku"] for line in order.lines] == ["FAKE-SKU-100", "FAKE-SKU-200"]
    assert str(order.total) == "1234.560"
    mapping_case.refresh_from_db()
    assert mapping_case.state == "resolved"
    assert list(mapping_case.history.values_list("action", flat=True)) == [
        "opened",
        "fix_applied",
        "retried",
        "linked",
        "auto_resolved",
    ]


def test_fix_allowed_to_pricing_ops(
    mapping_case, users, django_capture_on_commit_callbacks
):
    # Pricing Ops owns the pricing lane, so it may apply the fix and retry,
    # although it may not retry a command on its own.
    with django_capture_on_commit_callbacks(execute=True):
        fixes.add_lookup_row_and_retry(
            mapping_case,
            acting_user=users["pricing"],
            key="FAKE-SKU-404",
            value="FAKE-SKU-200",
        )
    mapping_case.refresh_from_db()
    assert mapping_case.state == "resolved"


def test_fix_with_unknown_erp_code_keeps_case_open(
    mapping_case, users, django_capture_on_commit_callbacks
):
    # The row maps to a product the ERP does not have: the command fails, and
    # the same case stays open with the ERP's answer instead of closing early.
    with django_capture_on_commit_callbacks(execute=True):
        fixes.add_lookup_row_and_retry(
            mapping_case,
            acting_user=users["finance"],
            key="FAKE-SKU-404",
            value="NOPE-404",
        )
    mapping_case.refresh_from_db()
    assert mapping_case.state in ("open", "assigned")
    assert mapping_case.command.state == "failed"
    assert "NOPE-404" in mapping_case.message
    assert ExceptionCase.objects.count() == 1
    assert SandboxOrder.objects.count() == 0


def test_fix_refused_to_viewer(mapping_case, users):
    with pytest.raises(PermissionDenied):
        fixes.add_lookup_row_and_retry(
            mapping_case,
            acting_user=users["viewer"],
            key="FAKE-SKU-404",
            value="FAKE-SKU-200",
        )


def test_fix_customer_then_retry(
    deals, send, users, django_capture_on_commit_callbacks
):
    from syncflows.models import SandboxCustomer

    SandboxCustomer.objects.filter(reference="pipedrive:organization:201").delete()
    deal = c07_deal(line_items=c07_deal()["line_items"][:1], total="1000.00")
    send.generic(deal, secret=SECRET, slug="deals-json")
    case = ExceptionCase.objects.get(reason_code="master_data_missing")
    assert fixes.fix_for(case)["reference"] == "pipedrive:organization:201"
    with django_capture_on_commit_callbacks(execute=True):
        fixes.add_customer_and_retry(
            case, acting_user=users["finance"], name="Example Widgets Ltd"
        )
    assert SandboxOrder.objects.count() == 1
    case.refresh_from_db()
    assert case.state == "resolved"


def test_acceptance_fix_shows_both_values(mapping_case):
    mapping_case.reason_code = "acceptance_failed"
    mapping_case.detail = {
        "check": "Order total equals the CRM amount",
        "expected": "1234.56",
        "actual": "1300.00",
    }
    fix = fixes.fix_for(mapping_case)
    assert fix == {
        "kind": "compare",
        "check": "Order total equals the CRM amount",
        "expected": "1234.56",
        "actual": "1300.00",
        "differs": True,
    }


def test_erp_rejected_fix_lists_field_errors(mapping_case):
    mapping_case.reason_code = "erp_rejected"
    mapping_case.message = "The ERP rejected the order: customer is blocked."
    mapping_case.detail = {"status": 422, "field_errors": {"customer": "is blocked"}}
    fix = fixes.fix_for(mapping_case)
    assert fix["message"] == "The ERP rejected the order: customer is blocked."
    assert fix["field_errors"] == [("customer", "is blocked")]
    assert fix["status"] == 422


def test_compensate_then_replay_creates_new_order(
    deals, send, users, django_capture_on_commit_callbacks
):
    send.generic(
        c07_deal(line_items=c07_deal()["line_items"][:1], total="1000.00"),
        secret=SECRET,
        slug="deals-json",
    )
    command = Command.objects.get(state="succeeded")
    record = command.record
    # A case asks for the order to be replaced, for example after a conflict.
    case = ExceptionCase.objects.create(
        reason_code="idempotency_conflict",
        title="t",
        message="m",
        lane=Lane.objects.get(slug="reconciliation"),
        owner_group=Group.objects.get(name=FINANCE),
        record_key=record.record_key,
        command=command,
        run=command.runs.first(),
        brief=command.brief_version.brief,
        opened_at=timezone.now(),
        due_at=timezone.now() + timedelta(hours=4),
    )
    with pytest.raises(PermissionDenied):
        actions.compensate_case(case, acting_user=users["pricing"])
    actions.compensate_case(case, acting_user=users["finance"], note="Wrong customer.")
    command.refresh_from_db()
    assert command.state == "compensated"
    assert SandboxOrder.objects.get().state == "cancelled"
    assert SourceRecord.objects.get(pk=record.pk).order_generation == 2
    assert LedgerEntry.objects.filter(step="compensate", command=command).count() == 1
    with pytest.raises(actions.ActionRefused) as refusal:
        actions.compensate_case(case, acting_user=users["finance"])
    assert "nothing to reverse" in refusal.value.message

    with django_capture_on_commit_callbacks(execute=True):
        actions.replay_case(case, acting_user=users["finance"])
    orders = SandboxOrder.objects.order_by("id")
    assert [order.state for order in orders] == ["cancelled", "confirmed"]
    new_command = Command.objects.exclude(pk=command.pk).get()
    assert new_command.idempotency_key != command.idempotency_key
    case.refresh_from_db()
    assert case.state == "resolved"


def test_bulk_resolve_and_skip(mapping_case, users):
    closed = ExceptionCase.objects.create(
        reason_code="erp_rejected",
        title="t",
        message="m",
        lane=mapping_case.lane,
        owner_group=mapping_case.owner_group,
        record_key="x:1",
        state="resolved",
        opened_at=timezone.now(),
        due_at=timezone.now(),
    )
    bulk = start_bulk_action(
        "resolve",
        [mapping_case.pk, closed.pk],
        acting_user=users["finance"],
        params={"note": "Bulk."},
    )
    assert (bulk.state, bulk.total, bulk.done, bulk.succeeded, bulk.skipped) == (
        "done",
        2,
        2,
        1,
        1,
    )
    assert bulk.errors == [
        {
            "case": closed.pk,
            "message": f"Case {closed.pk} is resolved, so it cannot be resolved.",
        }
    ]


def test_bulk_large_runs_in_background(
    mapping_case, users, settings, django_capture_on_commit_callbacks
):
    settings.MESHLINE_BULK_INLINE_LIMIT = 0
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        bulk = start_bulk_action(
            "assign",
            [mapping_case.pk],
            acting_user=users["triage"],
            params={"user_id": users["finance"].pk},
        )
    assert bulk.state == "queued"
    for callback in callbacks:
        callback()
    bulk.refresh_from_db()
    assert (bulk.state, bulk.succeeded) == ("done", 1)
    assert BulkAction.objects.count() == 1


def test_bulk_retry_refused_to_pricing(mapping_case, users):
    with pytest.raises(PermissionDenied):
        start_bulk_action("retry", [mapping_case.pk], acting_user=users["pricing"])


# Notifications.


class SlackHandler(BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def slack(settings):
    SlackHandler.received = []
    SlackHandler.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlackHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.MESHLINE_SLACK_WEBHOOK_URL = (
        f"http://127.0.0.1:{server.server_port}/services/T0/B0/secret"
    )
    yield SlackHandler
    server.shutdown()
    server.server_close()


def test_slack_and_email_on_open(deals, send, slack, users):
    mail.outbox.clear()
    send.generic(c07_deal(), secret=SECRET, slug="deals-json")
    case = ExceptionCase.objects.get()
    assert len(slack.received) == 1
    text = slack.received[0]["text"]
    assert f"New case {case.pk}" in text
    assert f"http://127.0.0.1:8000/exceptions/{case.pk}/" in text
    assert "/trace/?q=" in text
    statuses = sorted(Notification.objects.values_list("channel", "status"))
    assert statuses == [("slack", "sent")]


def test_failed_webhook_is_retried_and_secret_hidden(deals, send, slack, caplog):
    slack.status = 500
    send.generic(c07_deal(), secret=SECRET, slug="deals-json")
    case = ExceptionCase.objects.get()
    assert case.reason_code == "mapping_missing"  # the pipeline was not blocked
    notification = Notification.objects.get(channel="slack")
    assert (notification.status, notification.attempts) == ("pending", 1)
    assert notification.last_error == "The Slack webhook returned HTTP 500."
    assert "secret" not in caplog.text.replace("whsec", "")

    slack.status = 200
    Notification.objects.filter(pk=notification.pk).update(
        next_attempt_at=timezone.now()
    )
    assert retry_due_notifications() == 1
    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == ("sent", 2)


def test_unreachable_webhook_gives_up(mapping_case, settings):
    settings.MESHLINE_SLACK_WEBHOOK_URL = "http://127.0.0.1:9/hooks/secret-token"
    settings.MESHLINE_NOTIFICATION_MAX_ATTEMPTS = 2
    (pk,) = notify_case(mapping_case, "reminder")
    for _ in range(2):
        Notification.objects.filter(pk=pk).update(next_attempt_at=timezone.now())
        deliver(pk)
    notification = Notification.objects.get(pk=pk)
    assert notification.status == "failed"
    assert notification.attempts == 2
    assert (
        notification.last_error == "The Slack webhook request failed (ConnectionError)."
    )
    assert "secret-token" not in notification.last_error


def test_broken_mail_never_raises(mapping_case, settings, users):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9
    mapping_case.owner_user = users["finance"]
    (pk,) = notify_case(mapping_case, "reminder")
    assert deliver(pk) == "pending"
    assert Notification.objects.get(pk=pk).last_error.startswith(
        "ConnectionRefusedError"
    )
