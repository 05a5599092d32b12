"""What the capacity forecast reads: elapsed time per task type, the scheduled runs ahead, and the recurring tasks
whose runs are not all materialized yet. Read in one snapshot, so a run is counted once: either it is a row of
task_schedule, or it lies past its task's watermark and is projected."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import numpy as np
import numpy.typing as npt

from taskmill.db import Connection, db_now

Conn = Connection | asyncpg.Pool
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# The view (0003_capacity.sql): attempts finished in the past year, per type.
TYPE_SUMMARY = """
SELECT type, runs, failures, mean_ms, p50_ms, p95_ms FROM average_elapsed_time_per_task_type ORDER BY type
"""


@dataclass(frozen=True, slots=True)
class TypeSummary:
    type: str
    runs: int
    failures: int
    mean_ms: float
    p50_ms: float
    p95_ms: float


async def summaries_since(conn: Conn) -> datetime:
    """Where the per-type view's year begins, by the database's clock."""
    since: datetime = await conn.fetchval("SELECT now() - interval '1 year'")
    return since


async def type_summaries(conn: Conn) -> list[TypeSummary]:
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            return await type_summaries(acquired)
    # On a freshly filled table the planner overestimates the view's cost and JIT-compiles it: measured 185 of
    # 331 ms over 200,000 results. The scan itself needs no JIT.
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL jit = off")
        return [TypeSummary(**dict(r)) for r in await conn.fetch(TYPE_SUMMARY)]


# The mean alone, for the forecast: a hashed aggregate over the year's results (the view's percentiles sort them).
# As in the view, a result recorded without its type is looked up through its run.
TYPE_MEANS = """
SELECT coalesce(r.type, (SELECT t.type FROM task_schedule s JOIN tasks t ON t.id = s.task_id
                         WHERE s.id = r.run_id AND s.scheduled_time = r.scheduled_time)) AS type,
       avg(r.duration_ms)::float8 AS mean_ms
FROM task_results r
WHERE r.finished_at > now() - interval '1 year' AND r.duration_ms IS NOT NULL
GROUP BY 1
"""


async def type_means(conn: Connection) -> dict[str, float]:
    """Mean elapsed ms per task type over the past year."""
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL jit = off")  # see type_summaries
        return {r["type"]: r["mean_ms"] for r in await conn.fetch(TYPE_MEANS)}


# The scheduled runs, as COPY's binary rows straight into numpy: a million runs are one scan and one buffer,
# with no per-row work on either side (no join, no conversion; a run already due is clipped to now in numpy).
# (asyncpg's copy_from_query wraps the SELECT in `COPY (...) TO STDOUT` itself.)
SCHEDULED_RUNS = """
SELECT task_id, scheduled_time FROM task_schedule WHERE status = 'scheduled' AND scheduled_time < $1
  AND (lease_until IS NULL OR lease_until < 'infinity')  -- a paused one-off's run waits for its resume
UNION ALL
-- Workflow steps and reduces waiting for their dependencies: they will run (counted as due now). And runs handed out
-- but not started (in the transport, or between two attempts): their whole compute is still to come.
SELECT task_id, scheduled_time FROM task_schedule
WHERE status IN ('blocked', 'queued', 'retrying') AND scheduled_time < $1
"""

# Runs under way: the compute each has used so far, for what it still needs. A few rows (the processors' slots).
RUNNING_RUNS = """
SELECT coalesce(array_agg(task_id), '{}') AS task_ids,
       coalesce(array_agg(extract(epoch FROM now() - started_at)::float8 * 1000), '{}') AS elapsed_ms
FROM task_schedule WHERE status = 'running'
"""
# COPY binary: an 11-byte signature, 4 bytes of flags and a 4-byte extension length, then per row a field count
# (int16) and each field's length (int32) and value, big-endian; timestamptz is int64 microseconds since
# 2000-01-01 UTC. Then a trailer of -1 (int16). Neither column can be NULL, so every row has this one shape.
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER, _TRAILER = 19, 2
_ROW = np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("task_id", ">i8"), ("t_len", ">i4"), ("t_us", ">i8")])
_PG_EPOCH_S = 946_684_800

# Per task with runs ahead: the compute one run needs. Its type's mean elapsed time ($2/$3), or the task's own
# estimate when the type has no history.
RUN_COSTS = """
SELECT coalesce(array_agg(t.id ORDER BY t.id), '{}') AS ids,
       coalesce(array_agg(coalesce(c.ms, t.estimated_ms)::float8 ORDER BY t.id), '{}') AS ms
FROM tasks t LEFT JOIN unnest($2::text[], $3::float8[]) AS c(type, ms) ON c.type = t.type
WHERE t.id = ANY($1::bigint[])
"""


def parse_runs(data: bytes) -> tuple[IntArray, FloatArray]:
    """(task ids, epoch seconds) of COPY's binary output of (task_id, scheduled_time)."""
    if not data.startswith(_SIGNATURE):
        raise ValueError("not COPY binary output")
    rows = np.frombuffer(data, dtype=_ROW, offset=_HEADER, count=(len(data) - _HEADER - _TRAILER) // _ROW.itemsize)
    if not ((rows["fields"] == 2) & (rows["id_len"] == 8) & (rows["t_len"] == 8)).all():
        raise ValueError("unexpected row shape in COPY output")
    return rows["task_id"].astype(np.int64), rows["t_us"].astype(np.float64) / 1e6 + _PG_EPOCH_S


# Active recurring tasks whose watermark lags the horizon: their runs past the watermark are not rows yet.
LAGGING_TASKS = """
SELECT t.id, t.schedule_kind::text AS kind, t.cron, t.every_seconds, t.timezone, t.schedule_from,
       t.materialized_until, coalesce(c.ms, t.estimated_ms)::float8 AS ms, t.window_seconds
FROM tasks t
LEFT JOIN unnest($2::text[], $3::float8[]) AS c(type, ms) ON c.type = t.type
WHERE t.active AND t.deleted_at IS NULL AND t.schedule_kind IN ('cron', 'interval')
  AND (t.materialized_until IS NULL OR t.materialized_until < $1)
UNION ALL
-- Scheduled workflows, whose runs the scheduler creates minutes ahead: each firing is a run of every step.
SELECT t.id, w.schedule_kind::text, w.cron, w.every_seconds, w.timezone, w.schedule_from, w.materialized_until,
       coalesce(c.ms, t.estimated_ms)::float8, 0
FROM workflows w
JOIN tasks t ON t.workflow_id = w.id AND t.deleted_at IS NULL
LEFT JOIN unnest($2::text[], $3::float8[]) AS c(type, ms) ON c.type = t.type
WHERE w.active AND w.deleted_at IS NULL AND w.schedule_kind IN ('cron', 'interval')
  AND (w.materialized_until IS NULL OR w.materialized_until < $1)
"""


# Tasks whose runs are spread over a window (taskmill/spread.py): the peak before spreading projects all of their
# occurrences at their nominal times (tasks_spread keeps this off a scan of every task).
SPREAD_TASKS = """
SELECT t.id, t.schedule_kind::text AS kind, t.cron, t.every_seconds, t.timezone, t.schedule_from,
       NULL::timestamptz AS materialized_until, coalesce(c.ms, t.estimated_ms)::float8 AS ms, t.window_seconds
FROM tasks t
LEFT JOIN unnest($1::text[], $2::float8[]) AS c(type, ms) ON c.type = t.type
WHERE t.window_seconds > 1 AND t.active AND t.deleted_at IS NULL AND t.schedule_kind IN ('cron', 'interval')
"""


@dataclass(frozen=True, slots=True)
class LaggingTask:
    id: int  # a task's, or a workflow step's (whose schedule is its workflow's)
    kind: str
    cron: str | None
    every_seconds: int | None
    timezone: str
    schedule_from: datetime
    materialized_until: datetime | None
    ms: float
    window_seconds: int = 0  # its runs are spread (taskmill/spread.py)


@dataclass(frozen=True, slots=True)
class Upcoming:
    now: datetime  # the database's clock
    run_task_ids: IntArray  # the runs not started before the horizon (scheduled, blocked, handed out): their tasks...
    run_times_s: FloatArray  # ...and times, in epoch seconds
    cost_ids: list[int]  # sorted ids of the tasks with runs ahead or under way...
    cost_ms: list[float]  # ...and the compute a run of each needs
    lagging: list[LaggingTask]
    spread: list[LaggingTask] = field(default_factory=list)  # every task whose runs are spread
    # The runs under way: their tasks and the compute each has used so far.
    running_task_ids: IntArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    running_elapsed_ms: FloatArray = field(default_factory=lambda: np.empty(0))


def distinct_ids(ids: IntArray) -> IntArray:
    """The distinct ids, ascending. Task ids are a dense identity: a mask over their range is O(n), where sorting
    a million of them (np.unique) took 30 ms; an id range far larger than the array falls back to the sort."""
    if len(ids) == 0:
        return ids
    top = int(ids.max())
    if top > 16 * len(ids) + 1_000_000:
        return np.unique(ids)
    present = np.zeros(top + 1, dtype=bool)
    present[ids] = True
    return np.flatnonzero(present).astype(np.int64)


def _parse_with_tasks(data: bytes, running: IntArray) -> tuple[IntArray, FloatArray, list[int]]:
    ids, times = parse_runs(data)
    return ids, times, distinct_ids(np.concatenate([ids, running])).tolist()


async def upcoming(conn: Connection, horizon_s: float, means: Awaitable[Mapping[str, float]]) -> Upcoming:
    """The runs not started up to `horizon_s` from now, those under way, and the tasks to project, in one
    repeatable-read snapshot. `means` (ms per task type) is awaited only once the runs are read: it may be read
    meanwhile elsewhere."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        now = await db_now(conn)
        horizon = await conn.fetchval("SELECT $1::timestamptz + make_interval(secs => $2)", now, horizon_s)
        buffer = io.BytesIO()
        await conn.copy_from_query(SCHEDULED_RUNS, horizon, output=buffer, format="binary")
        running = await conn.fetchrow(RUNNING_RUNS)
        assert running is not None
        running_ids = np.asarray(running["task_ids"], dtype=np.int64)
        # A million rows: parsed and sorted off the event loop.
        ids, times, tasks = await asyncio.to_thread(_parse_with_tasks, buffer.getvalue(), running_ids)
        known = await means
        types, ms = list(known), list(known.values())
        costs = await conn.fetchrow(RUN_COSTS, tasks, types, ms)
        lagging = await conn.fetch(LAGGING_TASKS, horizon, types, ms)
        spread = await conn.fetch(SPREAD_TASKS, types, ms)
    assert costs is not None
    return Upcoming(
        now,
        ids,
        times,
        costs["ids"],
        costs["ms"],
        [LaggingTask(**dict(r)) for r in lagging],
        [LaggingTask(**dict(r)) for r in spread],
        running_ids,
        np.asarray(running["elapsed_ms"], dtype=np.float64),
    )
