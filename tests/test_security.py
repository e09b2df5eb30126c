"""API token scopes, login lock-out, replayed signatures, secret rotation,
structured logs and the graceful stop of the dispatcher."""

import hashlib
import json
import logging
import re
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from meshline import shutdown
from meshline.logging import JsonFormatter
from meshline.models import ApiToken, LoginThrottle, UsedSignature
from meshline.roles import SALES_OPS, VIEWER
from syncflows.adapters.sandbox import SandboxAdapter
from syncflows.models import (
    Command,
    Connector,
    Delivery,
    InboundEvent,
    LedgerEntry,
    SandboxOrder,
)
from tests.conftest import FIXTURES, make_user

pytestmark = pytest.mark.django_db

HUBSPOT_BODY = (FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes()


def new_token(user, *scopes) -> str:
    api_token = ApiToken(user=user, name="erp-bot", scopes=list(scopes))
    token = api_token.issue()
    api_token.save()
    return token


def bearer(token, keyword="Token"):
    return {"HTTP_AUTHORIZATION": f"{keyword} {token}"}


# API tokens.


def test_token_admin_shows_token_once(client):
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    bot = make_user("erp-bot", VIEWER)
    client.force_login(admin)
    response = client.post(
        "/admin/meshline/apitoken/add/",
        {"user": bot.pk, "name": "ERP sync", "scopes": ["read"]},
    )
    assert response.status_code == 200
    token = re.search(r'value="(ml_[^"]+)"', response.content.decode()).group(1)
    stored = ApiToken.objects.get()
    assert stored.key_hash == hashlib.sha256(token.encode()).hexdigest()
    assert stored.scopes == ["read"]
    assert token not in json.dumps(list(ApiToken.objects.values()), default=str)

    change = client.get(f"/admin/meshline/apitoken/{stored.pk}/change/")
    assert change.status_code == 200
    assert token not in change.content.decode()
    assert stored.key_prefix in change.content.decode()


def test_token_read_scope_lists_commands(client):
    token = new_token(make_user("erp-bot", VIEWER), "read")
    response = client.get("/api/v1/commands/", **bearer(token))
    assert response.status_code == 200
    assert response.json()["count"] == 0
    assert client.get("/api/v1/commands/", **bearer(token, "Bearer")).status_code == 200


def test_token_without_scope_forbidden(client):
    token = new_token(make_user("erp-bot", VIEWER), "ingest")
    response = client.get("/api/v1/cases/", **bearer(token))
    assert response.status_code == 403
    assert "lacks the 'read' scope" in response.json()["message"]


def test_token_needs_role_as_well(client):
    token = new_token(make_user("erp-bot"), "read")
    response = client.get("/api/v1/commands/", **bearer(token))
    assert response.status_code == 403
    assert "needs one of these roles" in response.json()["message"]


def test_token_revoked_rejected(client):
    bot = make_user("erp-bot", VIEWER)
    token = new_token(bot, "read")
    ApiToken.objects.get().revoke()
    response = client.get("/api/v1/commands/", **bearer(token))
    assert response.status_code == 403
    assert "revoked" in response.json()["message"]


def test_token_unknown_rejected(client):
    response = client.get("/api/v1/commands/", **bearer("ml_not-a-real-token"))
    assert response.status_code == 403
    assert response.json()["message"].startswith("The API token is not valid")


def test_token_last_used_written_once_a_minute(client):
    token = new_token(make_user("erp-bot", VIEWER), "read")
    client.get("/api/v1/commands/", **bearer(token))
    first = ApiToken.objects.get().last_used_at
    assert first is not None
    client.get("/api/v1/commands/", **bearer(token))
    assert ApiToken.objects.get().last_used_at == first
    ApiToken.objects.update(last_used_at=first - timedelta(minutes=2))
    client.get("/api/v1/commands/", **bearer(token))
    assert ApiToken.objects.get().last_used_at > first


def test_token_admin_revoke_action(client):
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    token = new_token(make_user("erp-bot", VIEWER), "read")
    client.force_login(admin)
    response = client.post(
        "/admin/meshline/apitoken/",
        {"action": "revoke_tokens", "_selected_action": [ApiToken.objects.get().pk]},
    )
    assert response.status_code == 302
    assert ApiToken.objects.get().revoked_at is not None
    client.logout()
    assert client.get("/api/v1/commands/", **bearer(token)).status_code == 403


# Login lock-out.


def login(client, username, password, ip="10.0.0.1"):
    client.post(
        "/accounts/login/",
        {"username": username, "password": password},
        REMOTE_ADDR=ip,
    )
    return "_auth_user_id" in client.session


def test_lockout_after_failures(client, settings):
    settings.MESHLINE_LOGIN_MAX_FAILURES = 3
    make_user("sam", SALES_OPS)
    for _ in range(3):
        assert not login(client, "sam", "wrong")
    throttle = LoginThrottle.objects.get(kind="username", value="sam")
    assert throttle.failures == 3
    assert throttle.is_locked()
    assert not login(client, "sam", "pw")


def test_lockout_expires(client, settings):
    settings.MESHLINE_LOGIN_MAX_FAILURES = 2
    make_user("sam", SALES_OPS)
    login(client, "sam", "wrong")
    login(client, "sam", "wrong")
    LoginThrottle.objects.update(locked_until=timezone.now() - timedelta(seconds=1))
    assert login(client, "sam", "pw")
    assert not LoginThrottle.objects.filter(kind="username").exists()


def test_failures_below_limit_cleared(client, settings):
    settings.MESHLINE_LOGIN_MAX_FAILURES = 3
    make_user("sam", SALES_OPS)
    login(client, "sam", "wrong")
    assert login(client, "sam", "pw")
    assert not LoginThrottle.objects.filter(kind="username").exists()


def test_lockout_by_client_ip(client, settings):
    settings.MESHLINE_LOGIN_MAX_FAILURES_PER_IP = 3
    make_user("sam", SALES_OPS)
    for name in ("ann", "bob", "cat"):
        login(client, name, "wrong", ip="10.0.0.9")
    assert LoginThrottle.objects.get(kind="ip", value="10.0.0.9").is_locked()
    assert not login(client, "sam", "pw", ip="10.0.0.9")
    assert login(client, "sam", "pw", ip="10.0.0.10")


def test_lockout_visible_and_lifted_in_admin(client, settings):
    settings.MESHLINE_LOGIN_MAX_FAILURES = 2
    make_user("sam", SALES_OPS)
    login(client, "sam", "wrong")
    login(client, "sam", "wrong")
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    page = client.get("/admin/meshline/loginthrottle/")
    assert page.status_code == 200
    assert "sam" in page.content.decode()
    throttle = LoginThrottle.objects.get(kind="username")
    response = client.post(
        "/admin/meshline/loginthrottle/",
        {"action": "unlock", "_selected_action": [throttle.pk]},
    )
    assert response.status_code == 302
    client.logout()
    assert login(client, "sam", "pw")


# Webhook replay protection and secret rotation.


def test_signature_reuse_rejected(demo, send):
    stamp = int(time.time() * 1000)
    first = send.hubspot(HUBSPOT_BODY, timestamp_ms=stamp)
    assert first.status_code == 200
    events = InboundEvent.objects.count()
    replayed = send.hubspot(HUBSPOT_BODY, timestamp_ms=stamp)
    assert replayed.status_code == 409
    assert replayed.json()["code"] == "signature_reused"
    assert "already used" in replayed.json()["message"]
    assert InboundEvent.objects.count() == events
    rejected = Delivery.objects.get(status=Delivery.Status.REJECTED)
    assert rejected.error_code == "signature_reused"
    assert UsedSignature.objects.count() == 1


def test_retry_with_new_signature_is_duplicate(demo, send):
    stamp = int(time.time() * 1000)
    assert send.hubspot(HUBSPOT_BODY, timestamp_ms=stamp).status_code == 200
    retry = send.hubspot(HUBSPOT_BODY, timestamp_ms=stamp + 1000)
    assert retry.status_code == 200
    assert retry.json()["status"] == "duplicate"
    assert not Delivery.objects.filter(status=Delivery.Status.REJECTED).exists()
    assert UsedSignature.objects.count() == 2


def test_stripe_style_signature_reuse_rejected(demo, send):
    body = (FIXTURES / "salesforce_cdc_opportunity_create.json").read_bytes()
    stamp = int(time.time())
    assert send.salesforce_cdc(body).status_code == 200
    first = send.stripe_signed(
        "generic", b'{"id": "Q-1"}', "whsec_demo_generic_secret", timestamp=stamp
    )
    again = send.stripe_signed(
        "generic", b'{"id": "Q-1"}', "whsec_demo_generic_secret", timestamp=stamp
    )
    assert first.status_code != 409
    assert again.status_code == 409
    assert again.json()["code"] == "signature_reused"


def test_expired_signature_rejected(demo, send):
    old = int((time.time() - 301) * 1000)
    response = send.hubspot(HUBSPOT_BODY, timestamp_ms=old)
    assert response.status_code == 401
    assert response.json()["code"] == "signature_expired"
    assert UsedSignature.objects.count() == 0


def test_rotation_both_secrets_valid(demo, send):
    connector = Connector.objects.get(slug="hubspot")
    connector.secrets = ["new-hubspot-secret", "demo-hubspot-client-secret"]
    connector.save()
    body = json.loads(HUBSPOT_BODY)
    assert send.hubspot(body[:1], secret="new-hubspot-secret").status_code == 200
    old = send.hubspot(body[1:2], secret="demo-hubspot-client-secret")
    assert old.status_code == 200
    connector.secrets = ["new-hubspot-secret"]
    connector.save()
    ended = send.hubspot(body[2:3], secret="demo-hubspot-client-secret")
    assert ended.status_code == 401
    assert ended.json()["code"] == "signature_invalid"


# Structured logs.


def test_json_formatter_one_object_a_line():
    record = logging.makeLogRecord(
        {
            "name": "syncflows.services.dispatch",
            "levelname": "INFO",
            "msg": "Command %s failed:\nsecond line",
            "args": (7,),
            "command_id": 7,
            "case_id": 3,
        }
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "Command 7 failed:\nsecond line"
    assert entry["command_id"] == 7
    assert entry["case_id"] == 3
    assert entry["event_id"] is None
    assert entry["delivery_id"] is None
    assert entry["logger"] == "syncflows.services.dispatch"


def test_dispatch_logs_carry_command_id(demo, send, caplog):
    body = json.loads((FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_text())
    with caplog.at_level(logging.INFO):
        send.pipedrive(body)
    command = Command.objects.get()
    ids = {getattr(r, "command_id", None) for r in caplog.records}
    assert command.pk in ids


# Graceful stop.


def test_stop_releases_unstarted_commands(demo, send, monkeypatch):
    from syncflows.services import dispatch

    ran = []
    real_run = dispatch._run_loaded

    def run_then_stop(command, worker):
        ran.append(command.pk)
        real_run(command, worker)
        shutdown.request_stop()

    # One command at a time, as for an ERP without batch writes: the stop
    # comes between two commands of one claim.
    monkeypatch.setattr(SandboxAdapter, "batch_size", 1)
    monkeypatch.setattr(dispatch, "_run_loaded", run_then_stop)
    with monkeypatch.context() as patch:
        patch.setattr(dispatch, "claim", lambda limit, worker: [])
        for payload in _pipedrive_deals(3):
            send.pipedrive(payload)
    assert Command.objects.filter(state=Command.State.PENDING).count() == 3
    try:
        dispatch.dispatch_due(worker="w1")
    finally:
        shutdown.clear_stop()
    assert len(ran) == 1
    assert Command.objects.filter(state=Command.State.SUCCEEDED).count() == 1
    pending = Command.objects.filter(state=Command.State.PENDING)
    assert pending.count() == 2
    assert set(pending.values_list("claimed_by", flat=True)) == {""}

    monkeypatch.setattr(dispatch, "_run_loaded", real_run)
    dispatch.dispatch_due(worker="w2")
    assert Command.objects.filter(state=Command.State.SUCCEEDED).count() == 3
    executed = LedgerEntry.objects.filter(step=LedgerEntry.Step.EXECUTE)
    assert sorted(executed.values_list("command_id", flat=True)) == sorted(
        Command.objects.values_list("pk", flat=True)
    )
    assert SandboxOrder.objects.count() == 3


def test_cluster_stop_flag_sets_stop(monkeypatch):
    monkeypatch.setattr(shutdown, "_cluster_stop", None)
    with pytest.raises(RuntimeError):
        shutdown.request_cluster_stop()
    shutdown.create_cluster_stop_flag()
    assert not shutdown.stop_requested()
    shutdown.request_cluster_stop()
    assert shutdown.stop_requested()


def test_worker_logs_and_ignores_sigterm(caplog):
    import os
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    try:
        shutdown.worker_started()
        with caplog.at_level(logging.INFO, logger="meshline.shutdown"):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not shutdown.stop_requested()
    assert "only the qcluster process stops the cluster" in caplog.text


def test_qcluster_is_meshline_command():
    from django.core.management import get_commands

    assert get_commands()["qcluster"] == "meshline"


def _pipedrive_deals(count):
    template = json.loads(
        (FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_text()
    )
    for index in range(count):
        body = json.loads(json.dumps(template))
        deal_id = 500 + index
        body["meta"]["id"] = deal_id
        body["meta"]["entity_id"] = deal_id
        for part in ("current", "previous"):
            body[part]["id"] = deal_id
        body["previous"]["status"] = "open"
        yield body
