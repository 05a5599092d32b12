"""Reading runs back: a task's runs, recent runs across tasks, one run with its attempts (result versions) and its
status changes. Nothing here writes (every change of state is in taskmill/store/runs.py)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from taskmill.db import Connection

Conn = Connection | asyncpg.Pool

RUN_COLUMNS = """s.id, s.task_id, s.scheduled_time, s.status::text AS status, s.attempt, s.queued_at, s.started_at,
    s.finished_at, s.worker, s.error, coalesce(s.created_by, t.created_by) AS created_by"""

TASK_RUNS = f"""
SELECT {RUN_COLUMNS} FROM task_schedule s JOIN tasks t ON t.id = s.task_id
WHERE s.task_id = $1 AND ($2::run_status IS NULL OR s.status = $2)
  AND ($3::timestamptz IS NULL OR s.scheduled_time >= $3) AND ($4::timestamptz IS NULL OR s.scheduled_time < $4)
  AND ($5::timestamptz IS NULL OR s.scheduled_time < $5)
ORDER BY s.scheduled_time DESC LIMIT $6
"""

ONE_RUN = f"SELECT {RUN_COLUMNS} FROM task_schedule s JOIN tasks t ON t.id = s.task_id WHERE s.id = $1"

ATTEMPTS = """
SELECT attempt, status::text AS status, started_at, finished_at, duration_ms, worker, result, error
FROM task_results WHERE run_id = $1 ORDER BY attempt
"""

TRANSITIONS = """
SELECT from_status::text AS from_status, to_status::text AS to_status, attempt, worker, at
FROM run_audit WHERE run_id = $1 ORDER BY at
"""


async def task_runs(
    conn: Conn,
    task_id: int,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    before: datetime | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(TASK_RUNS, task_id, status, since, until, before, limit)


async def run_detail(
    conn: Conn, run_id: int
) -> tuple[asyncpg.Record, list[asyncpg.Record], list[asyncpg.Record]] | None:
    run = await conn.fetchrow(ONE_RUN, run_id)
    if run is None:
        return None
    return run, await conn.fetch(ATTEMPTS, run_id), await conn.fetch(TRANSITIONS, run_id)


# Recent runs across all tasks, newest first. Each filter adds a fixed condition, so every combination is one
# statement the planner sees with its real shape (an `$n IS NULL OR` form would defeat the indexes under a generic
# plan). Without a cursor the list starts now: runs materialized ahead of time are not "recent".
_RECENT_FILTERS = {
    "status": "s.status = ${n}::run_status",
    "task_id": "s.task_id = ${n}::bigint",
}
_RECENT_FIRST = "s.scheduled_time <= now()"
_RECENT_AFTER = "(s.scheduled_time, s.id) < (${n}::timestamptz, ${m}::bigint)"


def recent_runs_sql(*, status: bool, task_id: bool, cursor: bool) -> str:
    conditions = []
    n = 0
    for name, used in (("status", status), ("task_id", task_id)):
        if used:
            n += 1
            conditions.append(_RECENT_FILTERS[name].format(n=n))
    conditions.append(_RECENT_AFTER.format(n=n + 1, m=n + 2) if cursor else _RECENT_FIRST)
    limit = n + (3 if cursor else 1)
    return f"""
SELECT {RUN_COLUMNS}, t.name AS task_name FROM task_schedule s JOIN tasks t ON t.id = s.task_id
WHERE {" AND ".join(conditions)}
ORDER BY s.scheduled_time DESC, s.id DESC LIMIT ${limit}
"""


async def recent_runs(
    conn: Conn,
    *,
    status: str | None = None,
    task_id: int | None = None,
    before: tuple[datetime, int] | None = None,
    limit: int = 50,
) -> list[asyncpg.Record]:
    """Runs scheduled up to now (or before the cursor `(scheduled_time, id)`), newest first, with the task name."""
    sql = recent_runs_sql(status=status is not None, task_id=task_id is not None, cursor=before is not None)
    args: list[object] = [v for v in (status, task_id) if v is not None]
    if before is not None:
        args.extend(before)
    return await conn.fetch(sql, *args, limit)
