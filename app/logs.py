"""Logging setup for the server process (called from `python -m app`, never at import)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

from app.request_context import RequestIdFilter

LogFormat = Literal["json", "plain"]
PLAIN_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s"
PLAIN_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# LogRecord attributes that are not user-supplied `extra` fields.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """One line a person can scan: local time, level, message, and the request ID when inside a request."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT, datefmt=PLAIN_TIME_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "-")
        return line if request_id == "-" else f"{line} [{request_id}]"


def resolve_format(log_format: LogFormat | None, stream: TextIO) -> LogFormat:
    """The format asked for; unset, readable lines for a person at a terminal and JSON for everything else."""
    if log_format is not None:
        return log_format
    return "plain" if stream.isatty() else "json"


def configure_logging(level: str, log_format: LogFormat | None, stream: TextIO | None = None) -> None:
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    formatter = JsonFormatter() if resolve_format(log_format, stream) == "json" else PlainFormatter()
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Pillow logs every chunk it parses at DEBUG; keep that out of the service log.
    logging.getLogger("PIL").setLevel(max(logging.INFO, logging.getLogger().level))
