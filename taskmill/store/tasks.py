"""Task definitions: creation (with the single run of a one-off task, in the same transaction)."""

from __future__ import annotations

from datetime import datetime

from taskmill.db import Connection, jsonb
from taskmill.models import Task, TaskCreate
from taskmill.secrets import seal
from taskmill.states import ScheduleKind

INSERT_TASK = """
INSERT INTO tasks (name, type, payload, schedule_kind, cron, every_seconds, run_at, timezone, active,
                   max_retries, retry_delay_s, backoff, timeout_s, estimated_ms, created_by, secrets, secret_names)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
RETURNING *
"""

INSERT_RUN = """
INSERT INTO task_schedule (task_id, scheduled_time, created_by)
VALUES ($1, coalesce($2, now()), $3)
ON CONFLICT (task_id, scheduled_time) DO NOTHING
RETURNING id
"""


def _definition(spec: TaskCreate) -> tuple[object, ...]:
    """The definition columns, in the order INSERT_TASK and UPDATE_TASK take them."""
    s = spec.schedule
    return (
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
    )


async def create_task(
    conn: Connection, spec: TaskCreate, *, created_by: str | None = None, secret_key: str = ""
) -> Task:
    """Inserts a task; an immediate or once task gets its run now. Runs inside the caller's transaction if any,
    so a caller that rolls back has scheduled nothing."""
    s = spec.schedule
    async with conn.transaction():
        record = await conn.fetchrow(
            INSERT_TASK,
            *_definition(spec),
            created_by,
            seal(secret_key, spec.secret_values()),
            sorted(spec.secrets),
        )
        assert record is not None
        task = Task.from_record(record)
        if spec.active and s.kind in (ScheduleKind.IMMEDIATE, ScheduleKind.ONCE):
            await add_run(conn, task.id, s.at if s.kind is ScheduleKind.ONCE else None, created_by=created_by)
    return task


async def add_run(conn: Connection, task_id: int, at: datetime | None, *, created_by: str | None = None) -> int | None:
    """One run of a task at `at` (now when None); None if that instant already has a run."""
    run_id: int | None = await conn.fetchval(INSERT_RUN, task_id, at, created_by)
    return run_id


# Future runs that have not been handed out yet go; the scheduler (woken by the tasks trigger's NOTIFY)
# materializes the new schedule from now on. Past and in-flight runs stay, with their history.
# The task row is locked first, in its own statement: a scheduler that is materializing the task holds that lock
# until it commits, and the DELETE, taking a fresh snapshot after the wait, then sees the runs it inserted.
LOCK_TASK = "SELECT id FROM tasks WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
DROP_FUTURE_RUNS = """
DELETE FROM task_schedule WHERE task_id = $1 AND status = 'scheduled' AND scheduled_time > now()
"""
RESTART_SCHEDULE = """
UPDATE tasks SET materialized_until = NULL, schedule_from = now(), updated_at = now(), active = $2 WHERE id = $1
"""


async def _restart_schedule(conn: Connection, task_id: int, active: bool) -> bool:
    async with conn.transaction():
        if await conn.fetchval(LOCK_TASK, task_id) is None:
            return False
        await conn.execute(DROP_FUTURE_RUNS, task_id)
        await conn.execute(RESTART_SCHEDULE, task_id, active)
    return True


async def reschedule(conn: Connection, task_id: int) -> bool:
    """After an edit: drops the task's future scheduled runs so they are materialized again from its new
    definition. False when there is no such task."""
    return await _restart_schedule(conn, task_id, True)


async def set_active(conn: Connection, task_id: int, active: bool) -> bool:
    """Deactivating drops the future runs; activating schedules from now on (missed runs are not caught up)."""
    return await _restart_schedule(conn, task_id, active)


UPDATE_TASK = """
UPDATE tasks SET name = $2, type = $3, payload = $4, schedule_kind = $5, cron = $6, every_seconds = $7,
    run_at = $8, timezone = $9, active = $10, max_retries = $11, retry_delay_s = $12, backoff = $13,
    timeout_s = $14, estimated_ms = $15, materialized_until = NULL, schedule_from = now(), updated_at = now(),
    secrets = CASE WHEN $16 THEN $17 ELSE secrets END,
    secret_names = CASE WHEN $16 THEN $18 ELSE secret_names END
WHERE id = $1
RETURNING *
"""


async def update_task(conn: Connection, task_id: int, spec: TaskCreate, *, secret_key: str = "") -> Task | None:
    """Replaces a task's definition; its future scheduled runs go and are materialized again from the new one.
    Past and in-flight runs keep their history. Secrets are kept unless the new definition names them (they
    cannot be read back to be sent again). None when there is no such task."""
    replace_secrets = "secrets" in spec.model_fields_set
    sealed = seal(secret_key, spec.secret_values()) if replace_secrets else None
    s = spec.schedule
    async with conn.transaction():
        if await conn.fetchval(LOCK_TASK, task_id) is None:
            return None
        await conn.execute(DROP_FUTURE_RUNS, task_id)
        record = await conn.fetchrow(
            UPDATE_TASK,
            task_id,
            *_definition(spec),
            replace_secrets,
            sealed,
            sorted(spec.secrets),
        )
        assert record is not None
        task = Task.from_record(record)
        if spec.active and s.kind is ScheduleKind.ONCE:
            await add_run(conn, task.id, s.at, created_by=task.created_by)
    return task


# Deleting keeps the row (runs and results refer to it) and frees the name for a new task.
DELETE_TASK = """
UPDATE tasks SET deleted_at = now(), active = false, updated_at = now(), name = name || ' (deleted ' || id || ')'
WHERE id = $1
"""
CANCEL_FUTURE_RUNS = """
UPDATE task_schedule SET status = 'cancelled', finished_at = now(), lease_until = NULL
WHERE task_id = $1 AND status = 'scheduled'
"""


async def delete_task(conn: Connection, task_id: int) -> bool:
    """Soft-deletes a task and cancels its runs not yet handed out; history stays."""
    async with conn.transaction():
        if await conn.fetchval(LOCK_TASK, task_id) is None:
            return False
        await conn.execute(CANCEL_FUTURE_RUNS, task_id)
        await conn.execute(DELETE_TASK, task_id)
    return True


# A whole batch of tasks in one statement, and the runs of its immediate and once tasks in the same one.
INSERT_TASKS = """
WITH new AS (
    INSERT INTO tasks (name, type, payload, schedule_kind, cron, every_seconds, run_at, timezone, active,
                       max_retries, retry_delay_s, backoff, timeout_s, estimated_ms, created_by, secrets, secret_names)
    SELECT n, ty, p::jsonb, k, c, e, a, tz, act, mr, rd, b, t, est, $15, sec,
           ARRAY(SELECT jsonb_array_elements_text(sn::jsonb))
    FROM unnest($1::text[], $2::text[], $3::text[], $4::schedule_kind[], $5::text[], $6::int[], $7::timestamptz[],
                $8::text[], $9::bool[], $10::int[], $11::float8[], $12::float8[], $13::float8[], $14::int[],
                $16::bytea[], $17::text[])
        AS b(n, ty, p, k, c, e, a, tz, act, mr, rd, b, t, est, sec, sn)
    RETURNING id, name, schedule_kind, run_at, active, created_by
), runs AS (
    INSERT INTO task_schedule (task_id, scheduled_time, created_by)
    SELECT id, coalesce(run_at, now()), created_by FROM new WHERE active AND schedule_kind IN ('immediate', 'once')
)
SELECT id, name FROM new ORDER BY id
"""


async def create_tasks(
    conn: Connection, specs: list[TaskCreate], *, created_by: str | None = None, secret_key: str = ""
) -> list[tuple[int, str]]:
    """Inserts every task or none (one statement); returns (id, name) in order."""
    # The definition columns of every task, transposed into one array per column (payloads as JSON text).
    columns = [list(column) for column in zip(*(_definition(t) for t in specs), strict=True)]
    columns[2] = [jsonb(payload) for payload in columns[2]]
    rows = await conn.fetch(
        INSERT_TASKS,
        *columns,
        created_by,
        [seal(secret_key, t.secret_values()) for t in specs],
        [jsonb(sorted(t.secrets)) for t in specs],
    )
    return [(r["id"], r["name"]) for r in rows]
