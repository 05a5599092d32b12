"""The capacity role: every interval, forecasts the next hours and exports the processors they need."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import numpy as np
from prometheus_client import Gauge

from capacity.forecast import Forecast, forecast
from taskmill.db import create_pool
from taskmill.loops import wait_or_stop
from taskmill.settings import Settings

log = logging.getLogger(__name__)

# Each scheduled run weighs its type's mean elapsed time over the past year, or its task's own estimate.
UPCOMING_RUNS = """
WITH history AS (
    SELECT t.type, avg(r.duration_ms) AS mean_ms
    FROM task_results r JOIN task_schedule s ON s.id = r.run_id JOIN tasks t ON t.id = s.task_id
    WHERE r.finished_at > now() - interval '1 year' AND r.duration_ms IS NOT NULL
    GROUP BY t.type
)
SELECT array_agg(extract(epoch FROM s.scheduled_time - now())::float8) AS offsets,
       array_agg(coalesce(h.mean_ms, t.estimated_ms)::float8) AS ms
FROM task_schedule s JOIN tasks t ON t.id = s.task_id LEFT JOIN history h ON h.type = t.type
WHERE s.status = 'scheduled' AND s.scheduled_time >= now() AND s.scheduled_time < now() + make_interval(secs => $1)
"""

REQUIRED = Gauge("taskmill_required_instances", "Processors needed", ["window"])


async def compute(pool: asyncpg.Pool, settings: Settings) -> Forecast:
    horizon_s = settings.capacity_horizon_hours * 3600
    row = await pool.fetchrow(UPCOMING_RUNS, horizon_s)
    offsets = np.asarray((row and row["offsets"]) or [], dtype=np.float64)
    ms = np.asarray((row and row["ms"]) or [], dtype=np.float64)
    return forecast(
        offsets,
        ms,
        horizon_s=horizon_s,
        bucket_s=settings.capacity_bucket_s,
        capacity_ms=settings.capacity_ms_per_instance,
        buffer=settings.capacity_buffer,
    )


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        while True:
            try:
                result = await compute(pool, settings)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("forecast failed, will retry: %s", exc, extra={"action": "forecast"})
            else:
                now, peak = int(result.instances[0]), int(result.instances.max(initial=0))
                REQUIRED.labels("now").set(now)
                REQUIRED.labels("peak").set(peak)
                log.info("required instances: now %d, peak %d", now, peak, extra={"action": "forecast"})
            if until_idle or await wait_or_stop(stop, settings.capacity_interval_s):
                return
    finally:
        await pool.close()
