"""JSON log lines and the ids that log_context() puts on them.

The pipeline tests send Pipedrive deliveries through the inbound endpoint,
the pipeline and the dispatcher to the fake REST ERP on 127.0.0.1, with a
JSON handler on the root logger at DEBUG, so lines from urllib3 and the
connectors are checked as well as Meshline's own.
"""

import io
import json
import logging
import threading

import pytest

from exceptions.models import ExceptionCase
from meshline.logging import (
    ID_KEYS,
    JsonFormatter,
    LogContextFilter,
    current_ids,
    log_context,
)
from syncflows.demo import SKUS, load_demo_configuration
from syncflows.models import Command, Delivery, InboundEvent
from tests.conftest import FIXTURES
from tests.fakes import FakeErp

PIPEDRIVE = json.loads(
    (FIXTURES / "pipedrive_webhook_v1_updated_deal.json").read_text()
)
# Names and e-mail addresses in the fixture, none of which a log line may hold.
PERSONAL = [
    "Test Person",
    "Owner Name",
    "Example Widgets Ltd (FAKE)",
    "example-company+deal9@pipedrivemail.example",
]


@pytest.fixture
def json_log():
    """Attach a JSON handler with the context filter to the root logger.

    Returns a function that parses the lines written so far, one JSON object
    each, and the raw text for searching.
    """
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(LogContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    def read():
        text = stream.getvalue()
        return [json.loads(line) for line in text.splitlines()], text

    yield read
    root.removeHandler(handler)
    root.setLevel(previous_level)


def messages_of(lines, prefix):
    return [line for line in lines if line["message"].startswith(prefix)]


# The mechanism.


def test_context_ids_on_library_lines(json_log):
    library = logging.getLogger("urllib3.connectionpool")
    with log_context(event_id=3, command_id=7):
        library.debug("Starting new HTTP connection (1): 127.0.0.1:80")
    library.debug("outside")
    (inside, outside), _ = json_log()
    assert inside["event_id"] == 3
    assert inside["command_id"] == 7
    assert inside["case_id"] is None
    assert inside["delivery_id"] is None
    assert inside["logger"] == "urllib3.connectionpool"
    for key in ID_KEYS:
        assert outside[key] is None


def test_nested_context_adds_and_restores(json_log):
    logger = logging.getLogger("tests.nested")
    with log_context(event_id=3):
        with log_context(command_id=7, event_id=None):
            logger.info("inner")
            assert current_ids() == {"event_id": 3, "command_id": 7}
        logger.info("outer")
    (inner, outer), _ = json_log()
    assert inner["event_id"] == 3
    assert inner["command_id"] == 7
    assert outer["event_id"] == 3
    assert outer["command_id"] is None
    assert current_ids() == {}


def test_explicit_extra_wins(json_log):
    with log_context(command_id=7):
        logging.getLogger("tests.extra").info("other", extra={"command_id": 8})
    (line,), _ = json_log()
    assert line["command_id"] == 8


def test_exception_line_has_ids(json_log):
    with log_context(case_id=5):
        try:
            raise ValueError("bad value")
        except ValueError:
            logging.getLogger("exceptions.services").exception("Failed")
    (line,), _ = json_log()
    assert line["case_id"] == 5
    assert "ValueError: bad value" in line["exception"]


def test_unknown_id_rejected():
    with pytest.raises(TypeError, match="unknown ids \\['record_id'\\]"):
        with log_context(record_id=1):
            pass


def test_new_thread_starts_without_ids():
    seen = []
    with log_context(command_id=7):
        thread = threading.Thread(target=lambda: seen.append(current_ids()))
        thread.start()
        thread.join()
    assert seen == [{}]


def test_console_handler_has_filter():
    handlers = logging.getLogger().handlers
    filtered = [
        handler
        for handler in handlers
        if any(isinstance(f, LogContextFilter) for f in handler.filters)
    ]
    assert len(filtered) == 1


# The pipeline.


@pytest.fixture
def erp(db, monkeypatch):
    with FakeErp(skus=SKUS) as server:
        for name, value in server.environment().items():
            monkeypatch.setenv(name, value)
        load_demo_configuration(
            destination_adapter="rest", destination_settings=server.destination_settings()
        )
        yield server


def won_deal(deal_id: int, value: str, currency: str = "EUR") -> dict:
    body = json.loads(json.dumps(PIPEDRIVE))
    body["meta"]["id"] = deal_id
    body["meta"]["entity_id"] = deal_id
    for part in ("current", "previous"):
        body[part]["id"] = deal_id
        body[part]["value"] = value
        body[part]["currency"] = currency
    return body


@pytest.fixture
def sent(erp, send, json_log):
    """Send a deal the ERP accepts, one it rejects and one that fails acceptance.

    Returns the parsed lines, the raw text and the objects each deal made.
    """
    for body in (
        won_deal(9, "1234.56"),
        won_deal(10, "99.00", currency="CHF"),
        won_deal(11, "0.00"),
    ):
        assert send.pipedrive(body).status_code == 200
    lines, text = json_log()
    records = {}
    for deal_id in (9, 10, 11):
        key = f"pipedrive:deal:{deal_id}"
        event = InboundEvent.objects.get(record_id=str(deal_id))
        records[deal_id] = {
            "delivery": event.delivery,
            "event": event,
            "command": Command.objects.filter(record__record_key=key).first(),
            "case": ExceptionCase.objects.filter(record_key=key).first(),
        }
    return lines, text, records


def test_pipeline_lines_hold_no_personal_data(sent):
    lines, text, _records = sent
    assert len(lines) > 0
    for value in PERSONAL:
        assert value not in text
    for line in lines:
        assert set(ID_KEYS) <= set(line)


def test_pipeline_lines_carry_exact_ids(sent):
    lines, _text, records = sent
    accepted, rejected, unacceptable = records[9], records[10], records[11]
    assert Delivery.objects.count() == 3
    assert accepted["command"].state == Command.State.SUCCEEDED
    assert rejected["command"].state == Command.State.FAILED
    assert unacceptable["command"] is None

    for record in records.values():
        delivery_id = record["delivery"].pk
        (line,) = messages_of(lines, f"Delivery {delivery_id} for connector")
        assert line["delivery_id"] == delivery_id

    for record in (accepted, rejected):
        command_id = record["command"].pk
        (started,) = messages_of(lines, f"Command {command_id} attempt 1 started")
        assert started["command_id"] == command_id
    (succeeded,) = messages_of(lines, f"Command {accepted['command'].pk} succeeded")
    assert succeeded["command_id"] == accepted["command"].pk

    # A case opened by the dispatcher carries its command; one opened by the
    # pipeline before any command existed carries its event.
    case = rejected["case"]
    (opened,) = messages_of(lines, f"Case {case.pk} opened")
    assert opened["case_id"] == case.pk
    assert opened["command_id"] == rejected["command"].pk
    assert opened["event_id"] is None
    case = unacceptable["case"]
    (opened,) = messages_of(lines, f"Case {case.pk} opened")
    assert opened["case_id"] == case.pk
    assert opened["command_id"] is None
    assert opened["event_id"] == unacceptable["event"].pk

    for line in lines:
        if line["logger"].startswith("exceptions."):
            assert line["case_id"] in {rejected["case"].pk, unacceptable["case"].pk}


def test_lines_during_command_carry_its_id(sent):
    lines, _text, records = sent
    for deal_id in (9, 10):
        command_id = records[deal_id]["command"].pk
        start = lines.index(
            messages_of(lines, f"Command {command_id} attempt 1 started")[0]
        )
        outcome = next(
            index
            for index, line in enumerate(lines)
            if index > start
            and line["message"].startswith(
                (f"Command {command_id} succeeded", f"Command {command_id} failed")
            )
        )
        during = lines[start : outcome + 1]
        assert any(line["logger"].startswith("urllib3") for line in during)
        for line in during:
            assert line["command_id"] == command_id, line
