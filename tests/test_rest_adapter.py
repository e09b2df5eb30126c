"""The REST adapter against the strict fake ERP in tests.fakes.rest_erp."""

import copy
import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from django.core.exceptions import ImproperlyConfigured

from syncflows.adapters import get_adapter
from syncflows.adapters.base import AdapterError, CommandData, InvoiceInfo
from syncflows.adapters.rest import RestAdapter, parse_retry_after, summarise_body
from syncflows.adapters.rest_settings import TemplateError, render_body
from syncflows.models import Destination
from tests.fakes import FakeErp

KEY = "brief-7:hubspot:deal:900000001:v3"
PAYLOAD = {
    "crm_reference": "hubspot:deal:900000001",
    "customer": {"reference": "hubspot:company:800000001", "name": "Example Oy"},
    "currency": "EUR",
    "close_date": "2024-09-30",
    "lines": [
        {
            "sku": "FAKE-SKU-100",
            "quantity": "10",
            "unit_price": "99.99",
            "discount_percent": "10",
            "line_total": "899.91",
        },
        {
            "sku": "FAKE-SKU-200",
            "quantity": "3",
            "unit_price": "111.55",
            "line_total": "334.65",
        },
    ],
    "total": "1234.56",
}
ORDERS = "/api/orders"


@pytest.fixture
def erp():
    with FakeErp() as server:
        yield server


@pytest.fixture
def erp_env(erp, monkeypatch):
    for name, value in erp.environment().items():
        monkeypatch.setenv(name, value)
    return erp


def build(erp, auth="bearer", credentials=None, **overrides) -> RestAdapter:
    settings = erp.destination_settings(auth, **overrides)
    destination = Destination(
        slug="erp", adapter="rest", settings=settings, credentials=credentials
    )
    return RestAdapter(destination)


@pytest.fixture
def adapter(erp_env):
    rest = build(erp_env)
    yield rest
    rest.close()


def command(key=KEY, **changes) -> CommandData:
    payload = copy.deepcopy(PAYLOAD)
    payload.update(changes)
    return CommandData(
        idempotency_key=key, command_type="sales_order.create", payload=payload
    )


def raised(call, *args) -> AdapterError:
    with pytest.raises(AdapterError) as info:
        call(*args)
    return info.value


# Creating documents


def test_execute_returns_number(adapter, erp):
    result = adapter.execute(command())

    assert result.reference == "1"
    assert result.document_number == "SO-000001"
    assert result.data == {"state": "confirmed"}
    assert erp.orders[1]["number"] == "SO-000001"
    assert erp.orders[1]["idempotency_key"] == KEY
    assert erp.orders[1]["total"] == "1234.56"
    assert erp.orders[1]["lines"] == PAYLOAD["lines"]
    assert erp.count(ORDERS, "POST") == 1


def test_get_adapter_builds_rest(erp_env):
    destination = Destination(
        slug="erp", adapter="rest", settings=erp_env.destination_settings()
    )
    assert isinstance(get_adapter(destination), RestAdapter)


def test_unknown_command_type_is_mapping_missing(adapter):
    error = raised(adapter.execute, dataclasses.replace(command(), command_type="x.y"))
    assert error.reason_code == "mapping_missing"
    assert error.transient is False
    assert "'x.y'" in error.message


def test_missing_template_value_is_schema_invalid(adapter, erp):
    payload = copy.deepcopy(PAYLOAD)
    del payload["close_date"]
    bad = CommandData(KEY, "sales_order.create", payload)

    error = raised(adapter.execute, bad)

    assert error.reason_code == "schema_invalid"
    assert "payload.close_date has no value" in error.message
    assert erp.count(ORDERS) == 0


# Idempotency


def test_dropped_response_then_find_existing(adapter, erp):
    erp.drop_next(path=ORDERS)

    error = raised(adapter.execute, command())
    found = adapter.find_existing(KEY)

    assert error.reason_code == "erp_unavailable"
    assert error.transient is True
    assert found is not None
    assert found.reference == "1"
    assert found.document_number == "SO-000001"
    assert len(erp.orders) == 1


def test_slow_response_then_retry_returns_same(erp_env):
    erp = erp_env
    rest = build(erp, timeout=0.5)
    erp.delay_next(5, path=ORDERS)

    error = raised(rest.execute, command())
    retried = rest.execute(command())

    assert error.reason_code == "erp_unavailable"
    assert error.transient is True
    assert "timed out after 0.5 s" in error.message
    assert retried.reference == "1"
    assert retried.document_number == "SO-000001"
    assert retried.data == {"state": "confirmed", "found_existing": True}
    assert len(erp.orders) == 1
    assert erp.count(ORDERS, "POST") == 2
    assert erp.count(ORDERS, "GET") == 1


def test_find_existing_unknown_key_is_none(adapter, erp):
    adapter.execute(command())
    assert adapter.find_existing("another-key") is None


def test_conflict_with_changed_payload(adapter, erp):
    adapter.execute(command())

    changed = command(crm_reference="hubspot:deal:900000002")
    error = raised(adapter.execute, changed)

    assert error.reason_code == "idempotency_conflict"
    assert error.transient is False
    assert "SO-000001" in error.message
    assert error.detail["differences"] == {
        "crm_reference": {
            "erp": "hubspot:deal:900000001",
            "command": "hubspot:deal:900000002",
        }
    }
    assert len(erp.orders) == 1


def test_conflict_without_document(adapter, erp):
    erp.fail_next(1, 409, path=ORDERS)

    error = raised(adapter.execute, command())

    assert error.reason_code == "idempotency_conflict"
    assert error.transient is False
    assert f"No document carries the key {KEY}." in error.message
    assert erp.count(ORDERS, "GET") == 1
    assert erp.orders == {}


# ERP error responses


def test_validation_errors_in_plain_words(adapter, erp):
    lines = copy.deepcopy(PAYLOAD["lines"])
    lines[0]["sku"] = "NOPE-1"
    error = raised(adapter.execute, command(lines=lines, total="1.00"))

    assert error.reason_code == "erp_rejected"
    assert error.transient is False
    assert "rejected (422 Unprocessable Entity) POST /api/orders" in error.message
    assert "lines[0].sku: Unknown SKU 'NOPE-1'." in error.message
    assert (
        "total: The total 1.00 is not the sum of the line totals, 1234.56."
        in error.message
    )
    assert error.detail["status"] == 422
    assert error.detail["field_errors"] == {
        "lines[0].sku": ["Unknown SKU 'NOPE-1'."],
        "total": ["The total 1.00 is not the sum of the line totals, 1234.56."],
    }
    assert erp.orders == {}


def test_amount_as_number_is_rejected(erp_env):
    erp = erp_env
    commands = erp.destination_settings()["commands"]
    commands["sales_order.create"]["body"]["total"] = 1234.56
    rest = build(erp, commands=commands)

    error = raised(rest.execute, command())

    assert error.reason_code == "erp_rejected"
    assert error.detail["field_errors"] == {
        "total": ["Send the amount as a decimal string, not a JSON number."]
    }


def test_summarise_body_truncates_at_2_kb():
    summary = summarise_body("é" * 3000)
    assert summary.startswith("é" * 1024)
    assert summary.endswith("… (6000 bytes, truncated)")
    assert len(summary.split("…")[0].encode()) == 2048
    assert summarise_body("short") == "short"


def test_rate_limit_gives_retry_after(adapter, erp):
    erp.rate_limit_next("7", path=ORDERS)

    error = raised(adapter.execute, command())

    assert error.reason_code == "rate_limited"
    assert error.transient is True
    assert error.retry_after == 7.0
    assert erp.orders == {}


def test_rate_limit_http_date(adapter, erp):
    later = datetime.now(UTC) + timedelta(seconds=120)
    erp.rate_limit_next(format_datetime(later, usegmt=True), path=ORDERS)

    error = raised(adapter.execute, command())

    assert error.reason_code == "rate_limited"
    assert 0 < error.retry_after <= 120


def test_parse_retry_after_forms():
    now = datetime(2024, 10, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after("Tue, 01 Oct 2024 12:02:00 GMT", now) == 120.0
    assert parse_retry_after("Tue, 01 Oct 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_service_unavailable_is_transient(adapter, erp):
    erp.fail_next(2, 503, path=ORDERS)

    first = raised(adapter.execute, command())
    second = raised(adapter.execute, command())
    result = adapter.execute(command())

    for error in (first, second):
        assert error.reason_code == "erp_unavailable"
        assert error.transient is True
        assert "503 Service Unavailable" in error.message
    assert result.document_number == "SO-000001"
    assert len(erp.orders) == 1


def test_connection_refused_is_transient(erp_env):
    rest = build(erp_env)
    erp_env.stop()

    error = raised(rest.find_existing, KEY)

    assert error.reason_code == "erp_unavailable"
    assert error.transient is True


def test_unknown_customer_rule(erp_env, monkeypatch):
    erp = erp_env
    erp.known_customers = {"hubspot:company:1"}
    rule = {
        "status": 404,
        "body_pattern": "customer_not_found",
        "reason": "master_data_missing",
    }
    with_rule = build(erp, errors=[rule])
    without_rule = build(erp)

    error = raised(with_rule.execute, command())
    default = raised(without_rule.execute, command())

    assert error.reason_code == "master_data_missing"
    assert error.transient is False
    assert "No customer has the reference 'hubspot:company:800000001'." in error.message
    assert default.reason_code == "erp_rejected"
    assert erp.orders == {}


def test_preflight_validates_without_writing(adapter, erp):
    totals = adapter.preflight(command())

    assert totals == {"currency": "EUR", "lines_total": "1234.56", "total": "1234.56"}
    assert erp.count("/api/orders/validate", "POST") == 1
    assert erp.orders == {}


def test_preflight_rejects_bad_currency(adapter, erp):
    error = raised(adapter.preflight, command(currency="XXX"))
    assert error.reason_code == "erp_rejected"
    assert error.detail["field_errors"] == {
        "currency": ["'XXX' is not an accepted currency."]
    }


def test_preflight_rejects_float_amount(adapter, erp):
    error = raised(adapter.preflight, command(total=1234.56))
    assert error.reason_code == "schema_invalid"
    assert erp.count("/api/orders/validate") == 0


# Authentication


def test_oauth2_refreshes_once_after_expiry(erp_env):
    erp = erp_env
    rest = build(erp, "oauth2")
    rest.execute(command())
    rest.fetch_invoice("1")
    assert erp.count("/oauth/token") == 1

    erp.expire_tokens()
    invoice = rest.fetch_invoice("1")

    assert invoice.number == "INV-000001"
    assert erp.count("/oauth/token") == 2
    assert erp.count("/api/invoices/1") == 3
    assert erp.count(ORDERS, "POST") == 1
    assert erp.count(ORDERS, "GET") == 0


def test_oauth2_token_is_cached(erp_env):
    erp = erp_env
    rest = build(erp, "oauth2")
    for _ in range(3):
        rest.fetch_invoice("1")
    assert erp.count("/oauth/token") == 1
    assert erp.count("/api/invoices/1") == 3


def test_oauth2_renews_before_expiry(erp_env):
    erp = erp_env
    erp.token_lifetime = 60
    rest = build(erp, "oauth2")
    now = [1000.0]
    rest.auth.clock = lambda: now[0]
    rest.fetch_invoice("1")

    now[0] += 53  # 60 s lifetime minus 6 s early renewal, not yet due
    rest.fetch_invoice("1")
    assert erp.count("/oauth/token") == 1
    now[0] += 2
    rest.fetch_invoice("1")

    assert erp.count("/oauth/token") == 2
    assert erp.count("/api/invoices/1") == 3


def test_echoed_secret_is_redacted(erp_env):
    erp = erp_env
    echo = {"message": f"Bad token {erp.bearer_token}."}
    erp.fail_next(1, 400, path=ORDERS, body=echo)

    error = raised(build(erp).execute, command())

    assert error.reason_code == "erp_rejected"
    assert error.message.endswith(": Bad token [secret].")
    assert erp.bearer_token not in error.detail["body"]


def test_oauth2_second_401_is_auth_failed(erp_env):
    erp = erp_env
    rest = build(erp, "oauth2")
    erp.fail_next(2, 401, path="/api/invoices/1")

    error = raised(rest.fetch_invoice, "1")

    assert error.reason_code == "auth_failed"
    assert error.transient is False
    assert erp.count("/oauth/token") == 2
    assert erp.count("/api/invoices/1") == 2


def test_oauth2_wrong_secret_is_auth_failed(erp_env, monkeypatch):
    monkeypatch.setenv("FAKE_ERP_CLIENT_SECRET", "not-the-secret")
    rest = build(erp_env, "oauth2")

    error = raised(rest.fetch_invoice, "1")

    assert error.reason_code == "auth_failed"
    assert "rejected the client credentials (401 Unauthorized)" in error.message
    assert erp_env.count("/api/invoices/1") == 0


def test_bearer_wrong_token_not_repeated(erp_env, monkeypatch):
    monkeypatch.setenv("FAKE_ERP_TOKEN", "wrong-token")
    rest = build(erp_env)

    error = raised(rest.execute, command())

    assert error.reason_code == "auth_failed"
    assert error.transient is False
    assert erp_env.count(ORDERS, "POST") == 1


def test_bearer_token_file_reread_after_401(erp_env, tmp_path):
    erp = erp_env
    token_file = tmp_path / "token"
    token_file.write_text(erp.bearer_token + "\n")
    auth = {"type": "bearer", "token_file": str(token_file)}
    rest = build(erp, auth=auth)
    rest.fetch_invoice("1")

    erp.bearer_token = "rotated-token-7a1b"
    token_file.write_text("rotated-token-7a1b")
    invoice = rest.fetch_invoice("1")

    assert invoice is None  # no order yet, so the ERP has no invoice 1
    assert erp.count("/api/invoices/1") == 3


def test_bearer_from_credentials(erp_env):
    erp = erp_env
    rest = build(erp, auth={"type": "bearer"}, credentials={"token": erp.bearer_token})
    assert rest.execute(command()).document_number == "SO-000001"


def test_basic_auth(erp_env, monkeypatch):
    erp = erp_env
    assert build(erp, "basic").execute(command()).document_number == "SO-000001"

    monkeypatch.setenv("FAKE_ERP_PASSWORD", "wrong-password")
    error = raised(build(erp, "basic").fetch_invoice, "1")
    assert error.reason_code == "auth_failed"


def test_missing_secret_env_is_auth_failed(erp_env, monkeypatch):
    monkeypatch.delenv("FAKE_ERP_TOKEN")
    error = raised(build(erp_env).execute, command())
    assert error.reason_code == "auth_failed"
    assert "environment variable FAKE_ERP_TOKEN" in error.message
    assert erp_env.count(ORDERS) == 0


def test_secret_never_in_logs_or_errors(erp_env, monkeypatch, caplog):
    erp = erp_env
    caplog.set_level(logging.DEBUG)
    texts = []

    oauth = build(erp, "oauth2")
    oauth.execute(command())
    erp.expire_tokens()
    texts.append(repr(oauth.fetch_invoice("1")))
    erp.fail_next(2, 401, path="/api/invoices/1")
    texts.append(repr(vars(raised(oauth.fetch_invoice, "1"))))
    bad = command(key="other", total="1.00")
    texts.append(repr(vars(raised(build(erp, "basic").execute, bad))))
    texts.append(repr(build(erp).execute(command())))
    erp.delay_next(5, path=ORDERS)
    texts.append(repr(vars(raised(build(erp, timeout=0.2).execute, command("k3")))))
    monkeypatch.setenv("FAKE_ERP_TOKEN", erp.bearer_token[:-1])
    texts.append(repr(vars(raised(build(erp).execute, command(key="k2")))))
    monkeypatch.setenv("FAKE_ERP_CLIENT_SECRET", erp.client_secret[:-1])
    texts.append(repr(vars(raised(build(erp, "oauth2").fetch_invoice, "1"))))

    secrets = [erp.bearer_token, erp.basic_password, erp.client_secret]
    secrets += list(erp.issued_tokens)
    assert len(erp.issued_tokens) == 3
    assert caplog.records
    for secret in secrets:
        assert secret not in caplog.text
        for text in texts:
            assert secret not in text


# Compensation and invoices


def test_compensate_cancels_idempotently(adapter, erp):
    result = dataclasses.asdict(adapter.execute(command()))

    first = adapter.compensate(result)
    second = adapter.compensate(result)

    expected = {
        "reference": "1",
        "document_number": "SO-000001",
        "status": 200,
        "state": "cancelled",
    }
    assert first == expected
    assert second == expected
    assert erp.orders[1]["state"] == "cancelled"
    assert erp.count("/api/orders/1/cancel", "POST") == 2


def test_compensate_unknown_document(adapter, erp):
    error = raised(adapter.compensate, {"reference": "99", "document_number": "X"})
    assert error.reason_code == "erp_rejected"
    assert "404 Not Found" in error.message


def test_fetch_invoice_states(adapter, erp):
    adapter.execute(command())

    posted = adapter.fetch_invoice("1")
    erp.set_invoice(1, state="paid", paid_on="2024-10-15")
    paid = adapter.fetch_invoice("1")

    assert posted == InvoiceInfo(
        reference="1",
        number="INV-000001",
        state="posted",
        currency="EUR",
        total="1234.56",
        paid_on=None,
        credited_total="0",
    )
    assert paid.state == "paid"
    assert paid.paid_on == "2024-10-15"
    assert adapter.fetch_invoice("2") is None


def test_fetch_invoice_state_map(erp_env):
    erp = erp_env
    commands = erp.destination_settings()["commands"]
    unmapped = build(erp)
    unmapped.execute(command())
    erp.set_invoice(1, state="open")

    error = raised(unmapped.fetch_invoice, "1")
    commands["fetch_invoice"]["state_map"] = {"open": "posted"}
    mapped = build(erp, commands=commands).fetch_invoice("1")

    assert error.reason_code == "mapping_missing"
    assert "'open'" in error.message
    assert mapped.state == "posted"


def test_fetch_invoice_after_compensate(adapter, erp):
    result = adapter.execute(command())
    adapter.compensate(dataclasses.asdict(result))
    assert adapter.fetch_invoice("1").state == "cancelled"


# Settings and templates


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"base_url": None}, "settings.base_url"),
        ({"base_url": "http://user:pw@127.0.0.1:1"}, "settings.base_url"),
        ({"timeout": -1}, "settings.timeout"),
        ({"auth": {"type": "bearer", "token": "abc"}}, "settings.auth.token"),
        ({"auth": {"type": "basic", "password_env": "X"}}, "settings.auth.username"),
        ({"auth": {"type": "kerberos"}}, "settings.auth.type"),
        ({"auth": {"type": "bearer"}}, "settings.auth needs token_env"),
        ({"errors": [{"status": 404, "reason": "oops"}]}, "settings.errors[0].reason"),
        ({"errors": [{"status": 999, "reason": "erp_rejected"}]}, "errors[0].status"),
        ({"errors": [{"body_pattern": "(", "reason": "erp_rejected"}]}, "body_pattern"),
        ({"commands": {}}, "settings.commands"),
    ],
)
def test_settings_errors_name_the_key(erp, change, named):
    with pytest.raises(ImproperlyConfigured) as info:
        build(erp, **change)
    assert named in str(info.value)


def test_settings_command_errors_name_the_key(erp):
    commands = erp.destination_settings()["commands"]
    commands["sales_order.create"]["method"] = "FETCH"
    with pytest.raises(ImproperlyConfigured) as bad_method:
        build(erp, commands=commands)
    del commands["find_existing"]
    with pytest.raises(ImproperlyConfigured) as no_lookup:
        build(erp, commands=commands)

    assert "settings.commands.sales_order.create.method" in str(bad_method.value)
    assert "settings.commands.find_existing is missing" in str(no_lookup.value)


def test_render_body_placeholders():
    context = {"payload": PAYLOAD, "key": "k-1"}
    template = {
        "ref": "{{ payload.crm_reference }}",
        "note": "Deal {{ payload.crm_reference }} ({{ key }})",
        "customer": "{{payload.customer}}",
        "first_sku": "{{ payload.lines.0.sku }}",
        "missing": "{{ payload.shipping? }}",
        "items": {
            "$each": "payload.lines",
            "as": "line",
            "item": {"code": "{{ line.sku }}", "pct": "{{ line.discount_percent? }}"},
        },
        "fixed": 3,
    }

    rendered = render_body(template, context)

    assert rendered == {
        "ref": "hubspot:deal:900000001",
        "note": "Deal hubspot:deal:900000001 (k-1)",
        "customer": PAYLOAD["customer"],
        "first_sku": "FAKE-SKU-100",
        "items": [{"code": "FAKE-SKU-100", "pct": "10"}, {"code": "FAKE-SKU-200"}],
        "fixed": 3,
    }
    with pytest.raises(TemplateError):
        render_body({"x": "{{ payload.nothing }}"}, context)
    with pytest.raises(TemplateError):
        render_body({"x": "text {{ payload.customer }}"}, context)
