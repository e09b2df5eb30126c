"""Structured log lines, and the pipeline ids that every line carries.

``log_context(event_id=..., command_id=...)`` sets ids for a block of code.
``LogContextFilter``, on the console handler of ``settings.LOGGING``, copies
them onto every record that the block writes, from any logger, Meshline's or
a library's (requests, urllib3, django-q2). ``JsonFormatter`` prints them.
"""

import contextlib
import contextvars
import json
import logging

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# Ids that come first in every JSON line; each is null when the record does
# not carry it, so log queries can rely on the keys.
ID_KEYS = ("delivery_id", "event_id", "command_id", "case_id")

# The ids of the innermost log_context() block. The dict is replaced, never
# changed in place, so a block's exit restores the ids of the enclosing one.
_current_ids: contextvars.ContextVar[dict] = contextvars.ContextVar(
    "meshline_log_ids", default={}
)


@contextlib.contextmanager
def log_context(**ids):
    """Put ``ids`` on every log record written inside the block.

    The ids add to those of an enclosing block, and an id passed as None
    leaves the enclosing value in place. An explicit ``extra`` on a log call
    wins over them. The ids belong to the current thread or asyncio task: a
    thread started inside the block, for example by a ThreadPoolExecutor,
    does not see them, so set them again in the code that the thread runs.
    """
    unknown = sorted(set(ids) - set(ID_KEYS))
    if unknown:
        raise TypeError(
            f"log_context() got unknown ids {unknown}; use {', '.join(ID_KEYS)}."
        )
    present = {key: value for key, value in ids.items() if value is not None}
    token = _current_ids.set({**_current_ids.get(), **present})
    try:
        yield
    finally:
        _current_ids.reset(token)


def current_ids() -> dict:
    """Return a copy of the ids that log_context() has set here."""
    return dict(_current_ids.get())


class LogContextFilter(logging.Filter):
    """Copy the ids of the current log_context() onto each record.

    Put it on a handler, not a logger: a logger's filters do not run for
    records that propagate to it from child loggers.
    """

    def filter(self, record):
        for key, value in _current_ids.get().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object a line, with the pipeline's ids."""

    def format(self, record):
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ID_KEYS:
            entry[key] = getattr(record, key, None)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
