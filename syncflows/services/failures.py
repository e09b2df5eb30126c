"""The hook through which the pipeline reports permanent failures.

The exceptions app registers a handler in its AppConfig.ready(); the pipeline
calls ``report_failure`` inside the transaction that records the failure, so
the case and the failure commit together.
"""

import logging
from dataclasses import dataclass, field

from meshline.logging import log_context

logger = logging.getLogger(__name__)

_handlers = []


@dataclass
class Failure:
    reason_code: str
    message: str
    record_key: str
    detail: dict = field(default_factory=dict)
    run: object = None  # SyncRun
    command: object = None  # Command
    event: object = None  # InboundEvent
    brief: object = None  # Brief
    destination: object = None  # Destination
    business_unit: str = ""


def register_failure_handler(handler) -> None:
    if handler not in _handlers:
        _handlers.append(handler)


def report_failure(failure: Failure):
    """Call every handler; return the first non-None result (the case)."""
    with log_context(
        command_id=getattr(failure.command, "pk", None),
        event_id=getattr(failure.event, "pk", None),
    ):
        return _call_failure_handlers(failure)


def _call_failure_handlers(failure: Failure):
    result = None
    for handler in _handlers:
        outcome = handler(failure)
        result = result if result is not None else outcome
    if not _handlers:
        logger.error(
            "No failure handler is registered; failure %s for %s has no case",
            failure.reason_code,
            failure.record_key,
        )
    return result


_resolution_handlers = []


def register_resolution_handler(handler) -> None:
    """Register a handler called when a record's brief succeeds again, so that
    cases opened by its earlier failures can be closed."""
    if handler not in _resolution_handlers:
        _resolution_handlers.append(handler)


def report_resolution(record_key: str, brief_id: int, run) -> None:
    for handler in _resolution_handlers:
        handler(record_key, brief_id, run)


_success_handlers = []


def register_success_handler(handler) -> None:
    """Register a handler called when a command succeeds after a retry."""
    if handler not in _success_handlers:
        _success_handlers.append(handler)


def report_success(command) -> None:
    with log_context(command_id=command.pk):
        for handler in _success_handlers:
            handler(command)


_dispatch_guards = []


def register_dispatch_guard(guard) -> None:
    """Register ``guard(command) -> (reason_code, message) | None``, asked before
    each command is sent. A non-None answer holds the command for review."""
    if guard not in _dispatch_guards:
        _dispatch_guards.append(guard)


def check_dispatch_guards(command):
    for guard in _dispatch_guards:
        verdict = guard(command)
        if verdict is not None:
            return verdict
    return None
