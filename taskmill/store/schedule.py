"""The scheduler's statements: which tasks need runs materialized, and inserting those runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from taskmill.db import Connection
from taskmill.models import Task

# Tasks of this replica's segment whose watermark is before `$1`, in id order from past `$5`: a pass walks them
# once (a frequent task is left short of the horizon on purpose, see scheduler/materialize.py). SKIP LOCKED lets
# replicas (and segments) share the walk without waiting on each other; the lock lasts for the caller's transaction.
TASKS_TO_MATERIALIZE = """
SELECT * FROM tasks
WHERE active AND deleted_at IS NULL AND schedule_kind IN ('cron', 'interval')
  AND (materialized_until IS NULL OR materialized_until < $1)
  AND id % $3 = $4 AND id > $5
ORDER BY id
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

# How far behind `$1` the least advanced active recurring task's watermark is; 0 when none lags.
LAG = """
SELECT coalesce(extract(epoch FROM $1 - min(coalesce(materialized_until, schedule_from))), 0)::float8
FROM tasks
WHERE active AND deleted_at IS NULL AND schedule_kind IN ('cron', 'interval')
  AND (materialized_until IS NULL OR materialized_until < $1)
"""

INSERT_RUNS = """
INSERT INTO task_schedule (task_id, scheduled_time)
SELECT * FROM unnest($1::bigint[], $2::timestamptz[])
ON CONFLICT (task_id, scheduled_time) DO NOTHING
"""

ADVANCE_WATERMARKS = """
UPDATE tasks t SET materialized_until = b.until
FROM unnest($1::bigint[], $2::timestamptz[]) AS b(id, until)
WHERE t.id = b.id
"""


async def tasks_to_materialize(
    conn: Connection, before: datetime, limit: int, segments: int = 1, segment: int = 0, after: int = 0
) -> list[tuple[Task, datetime | None]]:
    """Up to `limit` tasks with ids past `after` whose watermark is before `before`, locked, with their watermark."""
    rows = await conn.fetch(TASKS_TO_MATERIALIZE, before, limit, segments, segment, after)
    return [(Task.from_record(r), r["materialized_until"]) for r in rows]


async def insert_runs(conn: Connection, task_ids: Sequence[int], times: Sequence[datetime]) -> int:
    """Inserts the runs not there yet; returns how many were new."""
    if not task_ids:
        return 0
    status: str = await conn.execute(INSERT_RUNS, list(task_ids), list(times))
    return int(status.rsplit(" ", 1)[1])


async def advance_watermarks(conn: Connection, task_ids: Sequence[int], until: Sequence[datetime]) -> None:
    """Each task's watermark to its own `until` (every run before it is a row)."""
    await conn.execute(ADVANCE_WATERMARKS, list(task_ids), list(until))


# A backfill's occurrences: past on purpose, never missed (the claim leaves backfills alone), and only those not
# there yet (a repeat of the same range makes none).
INSERT_BACKFILL = """
INSERT INTO task_schedule (task_id, scheduled_time, backfill, created_by)
SELECT $1, t, true, $3 FROM unnest($2::timestamptz[]) AS t
ON CONFLICT (task_id, scheduled_time) DO NOTHING
RETURNING id
"""


async def insert_backfill(conn: Connection, task_id: int, times: Sequence[datetime], created_by: str | None) -> int:
    """Inserts the occurrences not there yet; returns how many were new."""
    return len(await conn.fetch(INSERT_BACKFILL, task_id, list(times), created_by))


async def lag_s(conn: Connection | asyncpg.Pool, due: datetime) -> float:
    """Seconds the least advanced active recurring task's watermark is behind `due` (0: caught up)."""
    lag: float = await conn.fetchval(LAG, due)
    return max(0.0, lag)
