"""The ingest and trace management commands, end to end."""

import json
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from syncflows.models import SandboxOrder
from tests.conftest import FIXTURES


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_ingest_wait_orders_fixture(demo, tmp_path, capsys):
    batch = tmp_path / "hubspot.json"
    batch.write_bytes((FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes())
    call_command("ingest", "hubspot", str(batch), "--wait", "--timeout", "60")
    output = capsys.readouterr().out
    assert "1 deliveries: 1 accepted." in output
    assert "Finished: 1 succeeded." in output
    order = SandboxOrder.objects.get()
    assert order.crm_reference == "hubspot:deal:900000001"
    assert order.total == Decimal("1234.56")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_ingest_json_lines(demo, tmp_path, capsys):
    lines = tmp_path / "pipedrive.jsonl"
    body = json.loads((FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_text())
    lines.write_text(json.dumps(body) + "\n" + json.dumps(body) + "\n")
    call_command("ingest", "pipedrive", str(lines), "--wait", "--timeout", "60")
    assert "2 deliveries: 1 accepted, 1 duplicate." in capsys.readouterr().out
    assert SandboxOrder.objects.count() == 1


@pytest.mark.django_db
def test_ingest_unknown_connector(demo, tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(CommandError, match="No connector is named 'nope'"):
        call_command("ingest", "nope", str(path))


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_trace_json_after_ingest(demo, tmp_path, capsys):
    batch = tmp_path / "hubspot.json"
    batch.write_bytes((FIXTURES / "hubspot_webhook_v3_deal_events.json").read_bytes())
    call_command("ingest", "hubspot", str(batch), "--wait", "--timeout", "60")
    capsys.readouterr()
    call_command("trace", "900000001", "--json")
    trace = json.loads(capsys.readouterr().out)
    assert trace["record"]["record_key"] == "hubspot:deal:900000001"
    assert [c["state"] for c in trace["commands"]] == ["succeeded"]
    steps = [entry["step"] for entry in trace["entries"]]
    assert steps.index("normalise") < steps.index("match") < steps.index("execute")
