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
    """Register ``handler(items)``, called when briefs succeed again on records,
    so that cases opened by their earlier failures can be closed. ``items`` is
    a list of ``(record_key, brief_id, run)``, one for each run of a batch."""
    if handler not in _resolution_handlers:
        _resolution_handlers.append(handler)


def report_resolution(record_key: str, brief_id: int, run) -> None:
    report_resolutions([(record_key, brief_id, run)])


def report_resolutions(items) -> None:
    for handler in _resolution_handlers:
        handler(items)


_success_handlers = []


def register_success_handler(handler) -> None:
    """Register ``handler(commands)``, called with the commands that succeeded,
    so that cases opened by their earlier attempts can be closed."""
    if handler not in _success_handlers:
        _success_handlers.append(handler)


def report_success(command) -> None:
    report_successes([command])


def report_successes(commands) -> None:
    for handler in _success_handlers:
        handler(commands)


_dispatch_guards = []


def register_dispatch_guard(guard, *, many=None) -> None:
    """Register ``guard(command) -> (reason_code, message) | None``, asked before
    each command is sent. A non-None verdict puts the command on hold for review.

    ``many(commands) -> {command_id: verdict}`` answers for a batch at once;
    without it, the batch calls ``guard`` for each command."""
    if all(entry[0] is not guard for entry in _dispatch_guards):
        _dispatch_guards.append((guard, many))


def check_dispatch_guards(command):
    return check_dispatch_guards_many([command]).get(command.pk)


def check_dispatch_guards_many(commands) -> dict:
    """Return the first verdict of the guards for each held command, by id."""
    verdicts: dict = {}
    for guard, many in _dispatch_guards:
        waiting = [command for command in commands if command.pk not in verdicts]
        if not waiting:
            break
        if many is not None:
            found = many(waiting)
        else:
            found = {command.pk: guard(command) for command in waiting}
        verdicts.update({pk: verdict for pk, verdict in found.items() if verdict is not None})
    return verdicts
