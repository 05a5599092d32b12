"""The capacity plan: from the database to a forecast per bucket, for the API and the capacity role alike."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from taskmill.db import Connection
from taskmill.planning.forecast import FloatArray, Forecast, IntArray, Runs, forecast
from taskmill.planning.projection import project
from taskmill.settings import Settings
from taskmill.store.capacity import TypeSummary, Upcoming, type_means, upcoming


@dataclass(frozen=True, slots=True)
class Options:
    horizon_s: float = 3 * 3600.0
    bucket_s: int = 60
    capacity_ms: float = 10_000.0
    buffer: float = 0.10

    @classmethod
    def of(cls, settings: Settings) -> Options:
        """The installation's forecast (TASKMILL_CAPACITY_*)."""
        return cls(
            horizon_s=settings.capacity_horizon_hours * 3600,
            bucket_s=settings.capacity_bucket_s,
            capacity_ms=settings.capacity_ms_per_instance,
            buffer=settings.capacity_buffer,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    generated_at: datetime  # the database's clock
    start: datetime  # the first bucket's start: `generated_at` rounded down to a whole bucket
    options: Options
    forecast: Forecast
    # The most runs any bucket would hold were no task spread over its window (None: no task is).
    unspread_peak_runs: int | None = None

    def bucket_starts(self) -> list[datetime]:
        step = timedelta(seconds=self.options.bucket_s)
        return [self.start + i * step for i in range(len(self.forecast.runs))]

    @property
    def now(self) -> int:
        """Instances needed in the current bucket."""
        return int(self.forecast.instances[0]) if len(self.forecast.instances) else 0

    def peak(self, within_s: float | None = None) -> int:
        """The most instances any bucket starting within `within_s` of now needs (the whole horizon when None)."""
        instances = self.forecast.instances
        if within_s is not None:
            instances = instances[: max(1, math.ceil(within_s / self.options.bucket_s))]
        return int(instances.max(initial=0))


class History:
    """Mean elapsed milliseconds per task type over the past year. A year-long average moves slowly, and the view
    reads every result of the year, so it is re-read at most every `ttl_s` seconds."""

    def __init__(self, ttl_s: float = 300.0) -> None:
        self._ttl_s = ttl_s
        self._read_at = -math.inf
        self._means: dict[str, float] = {}

    def remember(self, summaries: list[TypeSummary]) -> None:
        self._means = {s.type: s.mean_ms for s in summaries}
        self._read_at = time.monotonic()

    async def means(self, conn: Connection) -> dict[str, float]:
        if time.monotonic() - self._read_at > self._ttl_s:
            self._means = await type_means(conn)
            self._read_at = time.monotonic()
        return self._means


async def make_plan(pool: asyncpg.Pool, history: History, options: Options) -> Plan:
    """The plan from the database's state now. With a second connection in the pool the per-type means (a year of
    results) are read on it while the scheduled runs are read on the first."""
    async with pool.acquire() as conn:
        if pool.get_max_size() > 1:
            reading = asyncio.ensure_future(_means(pool, history))
            means: Awaitable[dict[str, float]] = reading
        else:
            reading, means = None, history.means(conn)
        try:
            # What the SQL reads covers the last bucket whole; the exact `now` is only known inside the snapshot.
            seen = await upcoming(conn, options.horizon_s + options.bucket_s, means)
        finally:
            if reading is not None:  # the runs could not be read: nor are the means needed, nor their error
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
    # numpy over a million runs, and cron expansion, take CPU: off the event loop.
    return await asyncio.to_thread(compute, seen, options)


async def _means(pool: asyncpg.Pool, history: History) -> dict[str, float]:
    async with pool.acquire() as conn:
        return await history.means(conn)


def per_run(run_task_ids: IntArray, task_ids: IntArray, task_ms: FloatArray) -> FloatArray:
    """Each run's compute, from its task's (`task_ids` ascending, holding every id of `run_task_ids`). A table
    indexed by id is one gather, where a binary search per run over a million runs took 80 ms; an id range far
    larger than the runs falls back to the search."""
    if len(run_task_ids) == 0:
        return np.empty(0)
    top = int(task_ids[-1])
    if top > 16 * len(run_task_ids) + 1_000_000:
        return task_ms[np.searchsorted(task_ids, run_task_ids)]
    table = np.zeros(top + 1)
    table[task_ids] = task_ms
    return table[run_task_ids]


def compute(seen: Upcoming, options: Options) -> Plan:
    bucket = options.bucket_s
    now = seen.now.timestamp()
    start = datetime.fromtimestamp(now // bucket * bucket, UTC)
    shift = now - start.timestamp()
    # Whole buckets, from the one holding `now` to the one holding the horizon.
    span = math.ceil((shift + options.horizon_s) / bucket) * bucket
    end = start + timedelta(seconds=span)
    # A run already due and still waiting (in the database or in the transport) is work still to do: it counts now.
    offsets = np.maximum(seen.run_times_s, now) - start.timestamp()
    cost_ids, cost_ms = np.asarray(seen.cost_ids, dtype=np.int64), np.asarray(seen.cost_ms, dtype=np.float64)
    ms = per_run(seen.run_task_ids, cost_ids, cost_ms)
    # A run under way needs what its type's mean leaves of it, in the bucket under way.
    left = np.maximum(per_run(seen.running_task_ids, cost_ids, cost_ms) - seen.running_elapsed_ms, 0.0)
    scheduled = Runs.concat([Runs.each(offsets, ms), Runs.each(np.full(len(left), shift), left)])
    projected = project(seen.lagging, seen.now, start, end)
    result = forecast(
        scheduled, projected, horizon_s=span, bucket_s=bucket, capacity_ms=options.capacity_ms, buffer=options.buffer
    )
    task_ids = np.concatenate([seen.run_task_ids, seen.running_task_ids])  # of each entry of `scheduled`
    return Plan(seen.now, start, options, result, _unspread_peak(seen, scheduled, task_ids, start, end, span, options))


def _unspread_peak(
    seen: Upcoming, scheduled: Runs, task_ids: IntArray, start: datetime, end: datetime, span: int, options: Options
) -> int | None:
    """The peak runs per bucket with the spread tasks' occurrences at their nominal times, from now on: their rows
    and projections are left out, and every occurrence of theirs projected unplaced instead."""
    if not seen.spread:
        return None
    spread_ids = np.asarray(sorted(t.id for t in seen.spread), dtype=np.int64)
    keep = ~np.isin(task_ids, spread_ids)
    others = Runs(scheduled.offsets_s[keep], scheduled.ms[keep], scheduled.count[keep])
    nominal = [replace(t, window_seconds=0, materialized_until=seen.now) for t in seen.spread]
    lagging = [t for t in seen.lagging if t.window_seconds <= 1] + nominal
    unspread = forecast(
        others,
        project(lagging, seen.now, start, end),
        horizon_s=span,
        bucket_s=options.bucket_s,
        capacity_ms=options.capacity_ms,
        buffer=options.buffer,
    )
    return int(unspread.runs.max(initial=0))
