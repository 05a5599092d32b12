from __future__ import annotations

from datetime import timedelta

import asyncpg
import numpy as np

from capacity.forecast import forecast, required_instances
from capacity.service import compute
from taskmill.db import create_pool
from taskmill.settings import Settings


def test_required_instances_applies_the_ten_percent_buffer() -> None:
    totals = np.array([0.0, 1.0, 9000.0, 9000.5, 18000.0, 27001.0])
    assert required_instances(totals, 10_000, 0.10).tolist() == [0, 1, 1, 2, 2, 4]


def test_runs_are_bucketed_by_time_and_weighted_by_their_cost() -> None:
    offsets = np.array([0.0, 30.0, 59.9, 60.0, 179.0, 180.0, -1.0])
    costs = np.array([5000.0, 5000.0, 100.0, 9001.0, 1.0, 1e9, 1e9])
    result = forecast(offsets, costs, horizon_s=180, bucket_s=60, capacity_ms=10_000, buffer=0.1)
    assert result.runs.tolist() == [3, 1, 1]  # the run at the horizon and the past one are outside
    assert result.required_ms.tolist() == [10100.0, 9001.0, 1.0]
    assert result.instances.tolist() == [2, 2, 1]


def test_an_empty_horizon_needs_no_instances() -> None:
    empty = np.array([], dtype=np.float64)
    result = forecast(empty, empty, horizon_s=3 * 3600, bucket_s=60, capacity_ms=10_000, buffer=0.1)
    assert len(result.runs) == 180
    assert result.instances.max() == 0


async def test_the_forecast_weighs_runs_by_their_types_history_or_their_estimate(
    settings: Settings, db: asyncpg.Connection
) -> None:
    noop = await db.fetchval(
        "INSERT INTO tasks (name, type, schedule_kind, estimated_ms) VALUES ('n', 'noop', 'immediate', 7000) "
        "RETURNING id"
    )
    sleep = await db.fetchval(
        "INSERT INTO tasks (name, type, schedule_kind, estimated_ms) VALUES ('s', 'sleep', 'immediate', 4000) "
        "RETURNING id"
    )
    # History for noop only: two finished runs averaging 3,000 ms.
    for ms in (2000.0, 4000.0):
        run = await db.fetchval(
            "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() - make_interval(secs => $2)) "
            "RETURNING id",
            noop,
            ms,
        )
        await db.execute(
            "INSERT INTO task_results (run_id, attempt, status, finished_at, duration_ms) "
            "VALUES ($1, 1, 'succeeded', now(), $2)",
            run,
            ms,
        )
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() + interval '10 s'), "
        "($1, now() + interval '20 s'), ($2, now() + interval '30 s'), ($2, now() + $3::interval)",
        noop,
        sleep,
        timedelta(hours=2),
    )
    pool = await create_pool(settings.database_url)
    try:
        result = await compute(pool, settings)
    finally:
        await pool.close()
    assert result.runs[0] == 3
    assert result.required_ms[0] == 3000 + 3000 + 4000
    assert result.instances[0] == 2
    assert result.runs.sum() == 4
