"""One trace per run across processes (taskmill/tracing.py): the API request that creates or invokes a task, the
distributor's publish, the processor's execution and an http task's call, each role exporting over real OTLP/HTTP
to a receiver in the test's memory; and the http target receives the call's context."""

from __future__ import annotations

import json

import asyncpg
from opentelemetry.trace import SpanKind

from tests.faults.harness import Stack
from tests.helpers import wait_until
from tests.observe.otlp import ReceivedSpan, Receiver, receiving
from tests.processor.http_targets import Target
from tests.transports import BOTH

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def _server(otlp: Receiver, name: str) -> ReceivedSpan:
    server = SpanKind.SERVER.value + 1  # the protobuf's numbering
    return _one([s for s in otlp.named("taskmill-api", name) if s.kind == server], name)


def _one(spans: list[ReceivedSpan], what: str) -> ReceivedSpan:
    assert len(spans) == 1, f"{what}: {spans}"
    return spans[0]


def _within(otlp: Receiver, server: ReceivedSpan) -> set[str]:
    """The ids of the API's spans in `server`'s subtree (FastAPI's own spans of dependencies and the endpoint)."""
    ids = {server.span_id}
    grew = True
    while grew:
        found = {s.span_id for s in otlp.spans if s.service == "taskmill-api" and s.parent_id in ids}
        grew = not found <= ids
        ids |= found
    return ids


async def _chain(otlp: Receiver, server: ReceivedSpan, run_id: int) -> tuple[ReceivedSpan, ReceivedSpan]:
    """The publish and execution spans of `run_id`, checked to descend from the request's `server` span, then the
    http call's."""
    publish = _one([s for s in otlp.named("taskmill-distributor", "publish http")
                    if s.attributes.get("taskmill.run_id") == run_id], "publish")  # fmt: skip
    run = _one([s for s in otlp.named("taskmill-processor", "run http")
                if s.attributes.get("taskmill.run_id") == run_id], "run")  # fmt: skip
    call = _one([s for s in otlp.named("taskmill-processor", "HTTP GET") if s.parent_id == run.span_id], "call")
    assert {publish.trace_id, run.trace_id, call.trace_id} == {server.trace_id}
    assert publish.parent_id in _within(otlp, server) and publish.kind == SpanKind.PRODUCER.value + 1
    assert run.parent_id == publish.span_id and run.kind == SpanKind.CONSUMER.value + 1
    assert call.kind == SpanKind.CLIENT.value + 1
    return run, call


@BOTH
async def test_a_trace_runs_from_the_api_request_through_the_publish_to_the_execution_and_its_http_call(
    stack: Stack, db: asyncpg.Connection, target: Target
) -> None:
    async with receiving() as otlp:
        await stack.start(distributor=1, processor=1, api=True, OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
                          OTEL_BSP_SCHEDULE_DELAY="100", TASKMILL_HTTP_ALLOW_HOSTS="127.0.0.1/32",
                          TASKMILL_LOG_FORMAT="json")  # fmt: skip
        caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        async with stack.api() as api:
            body = {"name": "traced", "type": "http", "payload": {"url": target.url("/hook"), "method": "GET"}}
            made = await api.post("/tasks", json=body, headers=caller)
            assert made.status_code == 201, made.text
            task_id = made.json()["id"]

            async def exported(n: int) -> bool:
                """Every role's spans of `n` runs are in (each role exports on its own schedule)."""
                names = [("taskmill-api", "POST /tasks"), ("taskmill-distributor", "publish http"),
                         ("taskmill-processor", "run http"), ("taskmill-processor", "HTTP GET")]  # fmt: skip
                wanted = [1 if name == "POST /tasks" else n for _, name in names]
                if n == 2:
                    names.append(("taskmill-api", "POST /tasks/{task_id}/invoke"))
                    wanted.append(1)
                return all(len(otlp.named(*where)) >= k for where, k in zip(names, wanted, strict=True))

            await wait_until(lambda: exported(1), timeout=20, what="the first run's spans")
            invoked = await api.post(f"/tasks/{task_id}/invoke")
            assert invoked.status_code == 201, invoked.text
            await wait_until(lambda: exported(2), timeout=20, what="the invoked run's spans")
        first_run = await db.fetchval("SELECT min(id) FROM task_schedule WHERE task_id = $1", task_id)

        # Creating: the API's span continues the caller's trace, and the run's spans follow it.
        created = _server(otlp, "POST /tasks")
        assert (created.trace_id, created.parent_id) == (CALLER_TRACE, CALLER_SPAN)
        assert created.kind == SpanKind.SERVER.value + 1 and created.attributes["http.response.status_code"] == 201
        run, call = await _chain(otlp, created, first_run)
        assert target.requests[0]["traceparent"].startswith(f"00-{CALLER_TRACE}-{call.span_id}-")
        # The processor's log lines of the run carry its ids and its trace (JSON lines, TASKMILL_LOG_FORMAT=json).
        (processor,) = stack.live("processor")
        lines = [json.loads(line) for line in processor.log.read_text().splitlines() if line.startswith("{")]
        of_run = [line for line in lines if line.get("run_id") == first_run]
        assert of_run, lines[-5:]
        for line in of_run:
            assert (line["role"], line["task_id"], line["trace_id"]) == ("processor", task_id, CALLER_TRACE), line
        assert any(line.get("span_id") == run.span_id for line in of_run)

        # Invoking: a trace of its own, rooted at the invoking request.
        invoking = _server(otlp, "POST /tasks/{task_id}/invoke")
        assert invoking.parent_id == "" and invoking.trace_id != CALLER_TRACE
        _, call = await _chain(otlp, invoking, invoked.json()["id"])
        assert target.requests[1]["traceparent"].startswith(f"00-{invoking.trace_id}-{call.span_id}-")


async def test_without_an_endpoint_nothing_is_traced_and_messages_carry_no_context(
    stack: Stack, db: asyncpg.Connection
) -> None:
    await stack.start(distributor=1, processor=1, api=True)
    async with stack.api() as api:
        made = await api.post("/tasks", json={"name": "plain", "type": "noop"},
                              headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})  # fmt: skip
        assert made.status_code == 201

    async def done() -> bool:
        status: str = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", made.json()["id"])
        return status == "succeeded"

    await wait_until(done, timeout=20, what="the run to succeed")
    assert await db.fetchval("SELECT traceparent FROM task_schedule WHERE task_id = $1", made.json()["id"]) is None
