"""The `history` workload: the claim with tens of millions of runs of history behind it.

Fills `runs` finished runs over the retention's days (each day its own partition, written straight into it: no
trigger, no audit row, as fast as the disk takes them), then puts a thousand runs due now in front, and shows the
claim's plan twice, EXPLAIN (ANALYZE, BUFFERS): as it is (statistics lagging the fill, as they do in production)
and after ANALYZE. The claim must stay an index range scan over the due runs, whatever the history holds: the
numbers to read are the buffers it touched and its time. (The statement is the claim function's, under the planner
settings the function declares.)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.database import truncate
from taskmill.db import SESSION
from taskmill.store.partitions import day_name, prepare

# The claim's own statement (claim_due_runs in the schema), as a query EXPLAIN can look into, rolled back.
CLAIM = """
WITH due AS (
    SELECT s.id, s.scheduled_time FROM task_schedule s
    WHERE s.status = 'scheduled' AND s.scheduled_time <= now() + make_interval(secs => 2)
      AND (s.lease_until IS NULL OR s.lease_until <= now())
    ORDER BY s.scheduled_time
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)
UPDATE task_schedule s SET status = 'queued', queued_at = now(), lease_until = now() + interval '5 minutes'
FROM due WHERE s.id = due.id AND s.scheduled_time = due.scheduled_time
"""

FILL_DAY = """
INSERT INTO {partition} (id, task_id, scheduled_time, status, attempt, queued_at, started_at, finished_at, worker)
OVERRIDING SYSTEM VALUE
SELECT nextval(pg_get_serial_sequence('task_schedule', 'id')), 1 + i % 1000, t, 'succeeded', 1, t, t, t, 'bench'
FROM generate_series(0, $3 - 1) i, LATERAL (SELECT $1::timestamptz + i * $2::interval AS t) x
"""


async def run(conn: asyncpg.Connection, runs: int, days: int) -> dict[str, Any]:
    await truncate(conn)
    await conn.execute(
        "INSERT INTO tasks (name, type, schedule_kind) SELECT 'h-' || i, 'noop', 'immediate' "
        "FROM generate_series(1, 1000) i"
    )
    now: datetime = await conn.fetchval("SELECT now()")
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days)
    await prepare(conn, first, days + 1)
    per_day = runs // days
    started = time.perf_counter()
    for offset in range(days):
        day = first + timedelta(days=offset)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        await conn.execute(
            FILL_DAY.format(partition=day_name("task_schedule", day)), start, timedelta(days=1) / per_day, per_day
        )
    fill_s = time.perf_counter() - started
    await conn.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) SELECT 1 + i % 1000, now() - i * interval '1 ms' "
        "FROM generate_series(1, 1000) i"
    )
    plans = {}
    for label in ("statistics lagging", "after ANALYZE"):
        if label == "after ANALYZE":
            await conn.execute("ANALYZE task_schedule")
        # The third of three: the first builds the audit trigger's plans in this session, as a role's first claim
        # does once.
        for _ in range(3):
            lines = await _explain_claim(conn)
        plans[label] = _summary(lines) | {"call_ms": await _time_calls(conn)}
    total = await conn.fetchval("SELECT count(*) FROM task_schedule")
    return {
        "workload": "history",
        "history_runs": total - 1000,
        "days": days,
        "fill_s": round(fill_s, 1),
        "claim": plans,
    }


async def _explain_claim(conn: asyncpg.Connection) -> list[str]:
    claim = conn.transaction()  # EXPLAIN ANALYZE does the update: undone after
    await claim.start()
    try:
        # Under the planner settings the claim function runs with (its SET clause).
        for setting in await conn.fetchval("SELECT proconfig FROM pg_proc WHERE proname = 'claim_due_runs'"):
            name, _, value = setting.partition("=")
            await conn.execute(f"SET LOCAL {name} = '{value}'")
        return [r[0] for r in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {CLAIM}")]
    finally:
        await claim.rollback()


async def _time_calls(conn: asyncpg.Connection, calls: int = 9) -> dict[str, float]:
    """The claim function called as a distributor calls it (its session's settings, generic plans; each call
    rolled back): the median and the slowest of `calls` calls after the first, which makes the session's plans."""
    for name, value in SESSION.items():
        await conn.execute(f"SET {name} = '{value}'")
    times = []
    for _ in range(calls + 1):
        claim = conn.transaction()
        await claim.start()
        try:
            started = time.perf_counter()
            claimed = await conn.fetchval("SELECT count(*) FROM claim_due_runs(1000, 300, 2, NULL)")
            times.append((time.perf_counter() - started) * 1000)
        finally:
            await claim.rollback()  # the next call claims the same runs
        assert claimed == 1000, claimed
    for name in SESSION:
        await conn.execute(f"RESET {name}")
    rest = sorted(times[1:])
    return {"first": round(times[0], 1), "median": round(rest[len(rest) // 2], 1), "max": round(rest[-1], 1)}


def _summary(lines: list[str]) -> dict[str, Any]:
    """The plan's lines, with the claim's time (the update with its audit trigger; planning apart: the function's
    plan is made once per session) and the buffers it touched pulled out."""

    def ms(prefix: str) -> float | None:
        line = next((line for line in lines if line.strip().startswith(prefix)), None)
        return float(line.split(":")[1].split()[0].removeprefix("time=")) if line else None

    buffers = next((line.strip() for line in lines if line.strip().startswith("Buffers")), "")
    return {"execution_ms": ms("Execution Time"), "planning_ms": ms("Planning Time"), "buffers": buffers,
            "plan": lines}  # fmt: skip
