"""Task definitions: creation (with the single run of a one-off task, in the same transaction)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from taskmill.models import Task, TaskCreate
from taskmill.states import ScheduleKind

INSERT_TASK = """
INSERT INTO tasks (name, type, payload, schedule_kind, cron, every_seconds, run_at, timezone, active,
                   max_retries, retry_delay_s, backoff, timeout_s, estimated_ms, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
RETURNING *
"""

INSERT_RUN = """
INSERT INTO task_schedule (task_id, scheduled_time, created_by)
VALUES ($1, coalesce($2, now()), $3)
ON CONFLICT (task_id, scheduled_time) DO NOTHING
RETURNING id
"""


async def create_task(conn: asyncpg.Connection, spec: TaskCreate, *, created_by: str | None = None) -> Task:
    """Inserts a task; an immediate or once task gets its run now. Runs inside the caller's transaction if any,
    so a caller that rolls back has scheduled nothing."""
    s = spec.schedule
    async with conn.transaction():
        record = await conn.fetchrow(
            INSERT_TASK,
            spec.name,
            spec.type,
            spec.payload,
            s.kind.value,
            s.cron,
            s.every_seconds,
            s.at,
            s.timezone,
            spec.active,
            spec.max_retries,
            spec.retry_delay_seconds,
            spec.backoff,
            spec.timeout_seconds,
            spec.estimated_ms,
            created_by,
        )
        assert record is not None
        task = Task.from_record(record)
        if spec.active and s.kind in (ScheduleKind.IMMEDIATE, ScheduleKind.ONCE):
            await add_run(conn, task.id, s.at if s.kind is ScheduleKind.ONCE else None, created_by=created_by)
    return task


async def add_run(
    conn: asyncpg.Connection, task_id: int, at: datetime | None, *, created_by: str | None = None
) -> int | None:
    """One run of a task at `at` (now when None); None if that instant already has a run."""
    run_id: int | None = await conn.fetchval(INSERT_RUN, task_id, at, created_by)
    return run_id
