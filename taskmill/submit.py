"""Runs requested by a message, from any language (seed 000's queue-triggered tasks, SPEC Z3; docs/messages.md).

A producer publishes a JSON request to the queue `<prefix>.submit` (RabbitMQ); the distributor reads it and records
the run exactly as `taskmill.client.defer` would, then acks. A request no run can come of goes to the dead-letter
queue with its reason in the header `x-taskmill-reason`.

    {"v": 1, "type": "billing.send_invoice", "payload": {"customer_id": 7}, "idempotency_key": "inv-7"}
    {"v": 1, "task": "nightly-report", "at": "2026-12-01T02:00:00Z"}

`type` (with `payload`, `idempotency_key`, `max_retries`, `retry_delay_seconds`, `timeout_seconds`, `priority`)
defers one run of that type; `task` makes one run of an existing task, by name. `at` (ISO 8601 with a zone) is
when; now if absent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from taskmill.client import DeferError, defer
from taskmill.db import Connection
from taskmill.store.tasks import add_run


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]
    type: str | None = Field(None, min_length=1, max_length=200)
    task: str | None = Field(None, min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    at: AwareDatetime | None = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=150)
    max_retries: int = Field(0, ge=0, le=100)
    retry_delay_seconds: float = Field(10.0, ge=0)
    timeout_seconds: float | None = Field(None, gt=0)
    priority: int = Field(0, ge=0, le=9)

    @model_validator(mode="after")
    def _one_target(self) -> SubmitRequest:
        if (self.type is None) == (self.task is None):
            raise ValueError("give exactly one of `type` (a run of that type) and `task` (a run of that task)")
        if self.task is not None and (self.payload or self.idempotency_key):
            raise ValueError("`payload` and `idempotency_key` go with `type`: a task has its own payload")
        return self


class Refused(ValueError):
    """A request no run can come of: the reason goes with it to the dead-letter queue."""


async def submit(conn: Connection, body: bytes, *, created_by: str = "submit") -> int:
    """Records the run a request asks for; returns its id. Refused names what is wrong."""
    try:
        request = SubmitRequest.model_validate_json(body)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(request)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise Refused(f"unreadable request: {reasons}") from None
    async with conn.transaction():
        if request.type is not None:
            try:
                return await defer(
                    conn,
                    request.type,
                    request.payload,
                    at=request.at,
                    idempotency_key=request.idempotency_key,
                    max_retries=request.max_retries,
                    retry_delay_seconds=request.retry_delay_seconds,
                    timeout_seconds=request.timeout_seconds,
                    priority=request.priority,
                    created_by=created_by,
                )
            except DeferError as exc:
                raise Refused(str(exc)) from None
        task_id = await conn.fetchval(
            "SELECT id FROM tasks WHERE name = $1 AND workflow_id IS NULL AND deleted_at IS NULL",
            request.task,
        )
        if task_id is None:
            raise Refused(f"task: no task named {request.task!r}")
        run_id = await add_run(conn, task_id, request.at, created_by=created_by)
        if run_id is None and request.at is not None:
            # That instant has its run already: the same request again, or one that raced it.
            run_id = await conn.fetchval(
                "SELECT id FROM task_schedule WHERE task_id = $1 AND scheduled_time = $2", task_id, request.at
            )
        if run_id is None:
            raise Refused(f"task: {request.task!r} got a run at this very instant already")
        return run_id
