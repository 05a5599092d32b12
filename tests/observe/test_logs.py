"""Log lines (taskmill/logs.py): JSON with the role, the run in hand and the current span's trace, or text on a
terminal; a record's own fields win over the context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from taskmill.logs import ContextFilter, JsonFormatter, TextFormatter, resolve_format, run_context


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter("processor"))
    logger = logging.getLogger("tests.observe.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


def test_json_lines_carry_the_role_the_run_in_hand_and_the_trace(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    tracer = TracerProvider().get_tracer("test")  # a span context of its own, not the global provider's
    logger.info("outside")
    with run_context(42, 7), tracer.start_as_current_span("run") as span:
        logger.info("inside", extra={"action": "succeeded"})
        logger.info("another run's line", extra={"run_id": 43})
    first, inside, explicit = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first == {"ts": first["ts"], "level": "info", "logger": "tests.observe.logs", "msg": "outside",
                     "role": "processor"}  # fmt: skip
    ids = span.get_span_context()
    assert inside | {"ts": None} == {
        "ts": None, "level": "info", "logger": "tests.observe.logs", "msg": "inside", "role": "processor",
        "run_id": 42, "task_id": 7, "trace_id": format(ids.trace_id, "032x"), "span_id": format(ids.span_id, "016x"),
        "action": "succeeded",
    }  # fmt: skip
    assert explicit["run_id"] == 43  # the record's own


def test_text_lines_end_with_the_ids_that_help(captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter())
    with run_context(42, 7):
        logger.warning("slow")
    assert stream.getvalue().rstrip().endswith("WARNING tests.observe.logs: slow [run 42 task 7]")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert resolve_format("auto", _Tty()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", _Tty()) == "json"
