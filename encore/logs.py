"""Structured JSON logs: one object per line, with the fields passed in `extra=`."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_context: ContextVar[dict[str, Any]] = ContextVar("encore_log_context", default={})  # noqa: B039

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields (delivery_id, event_id, run_id, …) to every log line written inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (fields given in `extra=` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JSONFormatter(logging.Formatter):
    """Format a record as one JSON object; extra fields ride along, secrets never are passed in."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup(level: str = "INFO") -> None:
    """Send the root logger's output to stderr as JSON lines (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JSONFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("alembic", "rq.cron"):
        logging.getLogger(noisy).setLevel("WARNING")
    rq_worker = logging.getLogger("rq.worker")
    if not any(isinstance(f, RepeatedJobLines) for f in rq_worker.filters):
        rq_worker.addFilter(RepeatedJobLines())


class RepeatedJobLines(logging.Filter):
    """Drops two of RQ's info lines per job that repeat the one before them ("Job OK", "result is kept").

    Each job still logs its start (with its id) and "Successfully completed … in N s"; a line costs
    about a tenth of a millisecond of the worker's CPU, which at hundreds of jobs a second shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        if record.msg == "Worker %s: job %s result is kept for %s seconds":
            return False
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == "Worker %s: %s: %s (%s)" and len(args) == 4 and "Job OK" in str(args[2]))
