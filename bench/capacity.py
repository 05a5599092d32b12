"""The `capacity` workload: the forecast over a large, freshly filled schedule (no ANALYZE: statistics lag).

Fills `runs` scheduled runs over the next three hours across `tasks` tasks of every type, `results` finished
attempts of history, and `lagging` cron and interval tasks the scheduler has not materialized (so the projection
works too); then times the whole plan (SQL, transfer, projection, numpy) as the API and the capacity role run it:
cold (the per-type history read too) and warm (history cached, the steady state).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import asyncpg

from bench.database import truncate
from taskmill.db import create_pool
from taskmill.planning.plan import History, Options, make_plan

FILL = """
WITH t AS (
    INSERT INTO tasks (name, type, schedule_kind, active, estimated_ms)
    SELECT 'bench-' || i, (ARRAY['noop', 'sleep', 'http', 'command'])[1 + i % 4], 'immediate', false, 100 + i % 900
    FROM generate_series(1, $1) i
    RETURNING id
), ids AS (SELECT array_agg(id) AS a FROM t)
INSERT INTO task_schedule (task_id, scheduled_time)
SELECT a[1 + i % cardinality(a)], now() + make_interval(secs => 10800.0 * i / $2)
FROM ids, generate_series(1, $2) i
"""

HISTORY = """
WITH r AS (
    INSERT INTO task_schedule (task_id, scheduled_time, status)
    SELECT t.id, now() - make_interval(secs => i), 'succeeded'
    FROM generate_series(1, $1) i JOIN tasks t ON t.id = 1 + i % 1000
    RETURNING id, task_id, scheduled_time
)
INSERT INTO task_results (run_id, attempt, status, finished_at, duration_ms, type, scheduled_time)
SELECT r.id, 1, 'succeeded', now() - make_interval(secs => r.id % 30000000), (r.id % 5000)::float8, t.type,
       r.scheduled_time
FROM r JOIN tasks t ON t.id = r.task_id
"""

LAGGING = """
INSERT INTO tasks (name, type, schedule_kind, cron, every_seconds, estimated_ms)
SELECT 'lagging-' || i, 'noop', CASE WHEN i % 2 = 0 THEN 'cron' ELSE 'interval' END::schedule_kind,
       CASE WHEN i % 2 = 0 THEN (ARRAY['* * * * *', '*/5 * * * *', '0 * * * *', '30 2 * * *'])[1 + i % 4] END,
       CASE WHEN i % 2 = 1 THEN 60 + i % 600 END, 200
FROM generate_series(1, $1) i
"""


async def run(conn: asyncpg.Connection, dsn: str, runs: int, results: int, lagging: int) -> dict[str, Any]:
    await truncate(conn)
    started = time.perf_counter()
    await conn.execute(FILL, 1000, runs)
    await conn.execute(HISTORY, results)
    await conn.execute(LAGGING, lagging)
    fill_s = time.perf_counter() - started
    pool = await create_pool(dsn, max_size=2)
    try:
        cold, warm = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            plan = await make_plan(pool, History(), Options())
            cold.append(time.perf_counter() - t0)
        history = History(ttl_s=3600)
        await make_plan(pool, history, Options())
        for _ in range(5):
            t0 = time.perf_counter()
            plan = await make_plan(pool, history, Options())
            warm.append(time.perf_counter() - t0)
    finally:
        await pool.close()
    return {
        "workload": "capacity",
        "scheduled_runs": runs,
        "history_results": results,
        "lagging_tasks": lagging,
        "fill_s": round(fill_s, 1),
        "forecast_runs": int(plan.forecast.runs.sum()),
        "projected_runs": int(plan.forecast.projected_runs.sum()),
        "peak_instances": plan.peak(),
        "cold_ms": {"median": round(statistics.median(cold) * 1000), "all": [round(s * 1000) for s in cold]},
        "warm_ms": {"median": round(statistics.median(warm) * 1000), "all": [round(s * 1000) for s in warm]},
    }
