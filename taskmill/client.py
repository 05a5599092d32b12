"""Scheduling from Python inside the caller's own transaction: if the caller rolls back, nothing was scheduled.

async with conn.transaction():
    await register_attendee(conn, ...)
    await schedule(conn, TaskCreate(name=f"reminder-{id}", type="http", payload=...,
                                    schedule=Schedule(kind="once", at=starts_at - timedelta(days=1))))
    await defer(conn, "billing.send_invoice", {"customer_id": 7}, idempotency_key="inv-7")   # one run, now
    await invoke_workflow(conn, "nightly-etl")                                                   # a workflow run
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import ValidationError

from taskmill.db import Connection
from taskmill.models import Schedule, Task, TaskCreate
from taskmill.states import ScheduleKind
from taskmill.store.tasks import create_task
from taskmill.store.tasktypes import registry_for
from taskmill.store.workflows import get_workflow, invoke
from taskmill.typecheck import default_timeout, type_problems


async def schedule(conn: Connection, task: TaskCreate, *, created_by: str | None = None) -> Task:
    """Creates the task (and its run, for immediate and once tasks) on the caller's connection. Inside the caller's
    transaction this is a savepoint of it; the distributor sees the run only once the caller commits."""
    return await create_task(conn, task, created_by=created_by)


class DeferError(ValueError):
    """What `defer` refuses: an unknown type or a payload that does not fit it (each field and why)."""


async def defer(
    conn: Connection,
    task_type: str,
    payload: dict[str, Any] | None = None,
    *,
    at: datetime | None = None,
    idempotency_key: str | None = None,
    max_retries: int = 0,
    retry_delay_seconds: float = 10.0,
    timeout_seconds: float | None = None,
    priority: int = 0,
    created_by: str | None = None,
    origin: Literal["defer", "submit"] = "defer",
) -> int:
    """One run of `task_type` now (or `at`), on the caller's connection and inside its transaction; returns the
    run's id. The same `idempotency_key` (per type) gives the run made the first time, not a second one (for as long
    as the run is kept: TASKMILL_RETENTION_DAYS). The type must be built in or registered by a processor, and the
    payload fit it (DeferError otherwise). The run's task is a one-off row (`origin`), left out of GET /tasks unless
    asked for and purged with its run."""
    name = _name(task_type, idempotency_key) if idempotency_key else None
    if name is not None and (existing := await _run_of_task_named(conn, name)) is not None:
        return existing
    fields: dict[str, Any] = {
        "name": name or f"defer:{task_type}:{uuid.uuid4()}",
        "type": task_type,
        "payload": payload or {},
        "schedule": Schedule(kind=ScheduleKind.ONCE, at=at) if at else Schedule(kind=ScheduleKind.IMMEDIATE),
        "max_retries": max_retries,
        "retry_delay_seconds": retry_delay_seconds,
        "priority": priority,
    }
    try:
        spec = TaskCreate(**fields)
    except ValidationError as exc:
        reasons = (f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise DeferError("; ".join(reasons)) from None
    registry = await registry_for(conn, [task_type])
    if problems := type_problems(spec, registry):
        raise DeferError("; ".join(f"{'.'.join(p['loc'][1:])}: {p['msg']}" for p in problems))
    timeout = timeout_seconds or default_timeout(spec, registry)
    if timeout is not None:
        spec = spec.model_copy(update={"timeout_seconds": timeout})
    try:
        # A savepoint: the caller's transaction goes on.
        task = await create_task(conn, spec, created_by=created_by, origin=origin)
    except asyncpg.UniqueViolationError:
        if name is None:
            raise
        existing = await _run_of_task_named(conn, name)  # made by a concurrent defer with the same key
        assert existing is not None
        return existing
    run_id: int = await conn.fetchval("SELECT id FROM task_schedule WHERE task_id = $1", task.id)
    return run_id


def _name(task_type: str, key: str) -> str:
    """The deferred run's task name, which makes the key unique per type (hashed when too long for a name)."""
    name = f"defer:{task_type}:{key}"
    return name if len(name) <= 200 else f"defer:{hashlib.sha256(f'{task_type}:{key}'.encode()).hexdigest()}"


async def _run_of_task_named(conn: Connection, name: str) -> int | None:
    run_id: int | None = await conn.fetchval(
        "SELECT s.id FROM tasks t JOIN task_schedule s ON s.task_id = t.id "
        "WHERE t.name = $1 AND t.workflow_id IS NULL ORDER BY s.id LIMIT 1",
        name,
    )
    return run_id


async def invoke_workflow(conn: Connection, name: str, *, created_by: str | None = None) -> int:
    """A run of the workflow `name` now, on the caller's connection and inside its transaction; returns the
    workflow run's id (LookupError when there is no such workflow)."""
    stored = await get_workflow(conn, name)
    if stored is None:
        raise LookupError(f"no workflow named {name!r}")
    run_id = await invoke(conn, stored.workflow.id, created_by=created_by)
    assert run_id is not None  # now is clock_timestamp(): never the instant of another run
    return run_id
