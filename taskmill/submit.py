"""Runs requested by a message, from any language (seed 000's queue-triggered tasks, SPEC Z3; docs/messages.md).

A producer publishes a JSON request to the queue `<prefix>.submit` (RabbitMQ); the distributor reads it and records
the run exactly as `taskmill.client.defer` would, then acks. A request no run can come of goes to the dead-letter
queue with its reason in the header `x-taskmill-reason`.

    {"v": 1, "type": "billing.send_invoice", "payload": {"customer_id": 7}, "idempotency_key": "inv-7"}
    {"v": 1, "task": "nightly-report", "at": "2026-12-01T02:00:00Z"}

`type` (with `payload`, `idempotency_key`, `max_retries`, `retry_delay_seconds`, `timeout_seconds`, `priority`)
defers one run of that type; `task` makes one run of an existing task, by name. `at` (ISO 8601 with a zone) is
when; now if absent.

Whoever may publish to the broker may send requests, so the queue may do what a `tasks:write` token may, and no
more: it never makes a command run (that takes `tasks:command` in the API) unless an operator names `command` in
TASKMILL_SUBMIT_TYPES, and it takes only the types that setting allows (every type but `command` by default). A run
of an existing command task by name is what a `tasks:write` token's invoke does: allowed where its type is.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from taskmill.client import DeferError, defer
from taskmill.db import Connection
from taskmill.store.tasks import add_run
from taskmill.tasktypes import COMMAND_TYPE


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


@dataclass(frozen=True, slots=True)
class Allowed:
    """The task types run requests may ask for (TASKMILL_SUBMIT_TYPES: names and fnmatch patterns). A pattern never
    stands for `command`: a new command run needs the type named."""

    patterns: tuple[str, ...] = ("*",)

    @classmethod
    def of(cls, setting: str) -> Allowed:
        return cls(tuple(p.strip() for p in setting.split(",") if p.strip()))

    def refusal(self, task_type: str, *, new: bool) -> str | None:
        """Why a run of `task_type` is refused (a new one of `type`, or one of an existing task), or None."""
        if new and task_type == COMMAND_TYPE and COMMAND_TYPE not in self.patterns:
            return (
                "type: the submit queue does not make command runs (in the API they need the scope tasks:command); "
                "an operator allows them by naming `command` in TASKMILL_SUBMIT_TYPES"
            )
        if not any(fnmatchcase(task_type, p) for p in self.patterns):
            return f"type: {task_type!r} is not among the types the submit queue takes ({', '.join(self.patterns)})"
        return None


async def submit(conn: Connection, body: bytes, *, created_by: str = "submit", allowed: Allowed = Allowed()) -> int:
    """Records the run a request asks for, if `allowed` lets it; returns its id. Refused names what is wrong."""
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
            if reason := allowed.refusal(request.type, new=True):
                raise Refused(reason)
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
                    origin="submit",
                )
            except DeferError as exc:
                raise Refused(str(exc)) from None
        task = await conn.fetchrow(
            "SELECT id, type FROM tasks WHERE name = $1 AND workflow_id IS NULL AND deleted_at IS NULL",
            request.task,
        )
        if task is None:
            raise Refused(f"task: no task named {request.task!r}")
        if reason := allowed.refusal(task["type"], new=False):
            raise Refused(f"task: {request.task!r} is of {reason.removeprefix('type: ')}")
        task_id = task["id"]
        run_id = await add_run(conn, task_id, request.at, created_by=created_by)
        if run_id is None and request.at is not None:
            # That instant has its run already: the same request again, or one that raced it.
            run_id = await conn.fetchval(
                "SELECT id FROM task_schedule WHERE task_id = $1 AND scheduled_time = $2", task_id, request.at
            )
        if run_id is None:
            raise Refused(f"task: {request.task!r} got a run at this very instant already")
        return run_id
