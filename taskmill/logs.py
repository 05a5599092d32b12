"""Structured logs (SPEC O3): one JSON object per line (TASKMILL_LOG_FORMAT=json, the default when stderr is not a
terminal), or readable text (`text`, the default on a terminal). Every line carries the role; while a run is in hand
(`run_context`) its run_id and task_id; while a span is current, its trace_id and span_id. A record's own `extra`
wins over the context."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

from opentelemetry import trace

_FIELDS = ("role", "run_id", "task_id", "trace_id", "span_id", "action")

# (run_id, task_id) of the run this task is handling.
_RUN: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("taskmill_run", default=None)


RunToken = contextvars.Token[tuple[int, int] | None]


def enter_run(run_id: int, task_id: int) -> RunToken:
    """From here log lines carry the run's ids (in this task and the tasks it starts), until `leave_run`."""
    return _RUN.set((run_id, task_id))


def leave_run(token: RunToken) -> None:
    _RUN.reset(token)


@contextlib.contextmanager
def run_context(run_id: int, task_id: int) -> Iterator[None]:
    """Log lines written inside carry the run's ids."""
    token = enter_run(run_id, task_id)
    try:
        yield
    finally:
        leave_run(token)


def described(exc: BaseException) -> str:
    """An exception for a log line: its type, and its message when it has one (a TimeoutError has none, and a
    line that ends "failed: " says nothing)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ContextFilter(logging.Filter):
    """Adds the role, the run in hand and the current span's ids to every record that lacks them."""

    def __init__(self, role: str | None) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        if self.role is not None and getattr(record, "role", None) is None:
            record.role = self.role
        run = _RUN.get()
        if run is not None and getattr(record, "run_id", None) is None:
            record.run_id, record.task_id = run
        span = trace.get_current_span().get_span_context()
        if span.is_valid and getattr(record, "trace_id", None) is None:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [run 42 task 7 trace 4bf9...]`: the ids that help, after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [
            f"{label} {value}"
            for label, name in (("run", "run_id"), ("task", "task_id"), ("trace", "trace_id"))
            if (value := getattr(record, name, None)) is not None
        ]
        return f"{line} [{' '.join(ids)}]" if ids else line


def resolve_format(fmt: str, stream: object = sys.stderr) -> str:
    """`auto`: text on a terminal, JSON lines otherwise (a supervisor, a container, a file)."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure(level: str, fmt: str, role: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    handler.addFilter(ContextFilter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aio-pika and aiormq are chatty about reconnects at INFO; their warnings still show.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
