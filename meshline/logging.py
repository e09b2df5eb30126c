import json
import logging

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# Ids that the pipeline passes as ``extra``; they come first in every line and
# are null when a record does not carry them, so log queries can rely on them.
ID_KEYS = ("delivery_id", "event_id", "command_id", "case_id")


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
