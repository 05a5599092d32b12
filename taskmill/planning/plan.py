"""The capacity plan: from the database to a forecast per bucket, for the API and the capacity role alike."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from taskmill.db import Connection
from taskmill.planning.forecast import Forecast, Runs, forecast
from taskmill.planning.projection import project
from taskmill.settings import Settings
from taskmill.store.capacity import TypeSummary, Upcoming, type_summaries, upcoming


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
            self.remember(await type_summaries(conn))
        return self._means


async def make_plan(pool: asyncpg.Pool, history: History, options: Options) -> Plan:
    async with pool.acquire() as conn:
        means = await history.means(conn)
        # What the SQL reads covers the last bucket whole; the exact `now` is only known inside the snapshot.
        seen = await upcoming(conn, options.horizon_s + options.bucket_s, means)
    # numpy over a million runs, and cron expansion, take CPU: off the event loop.
    return await asyncio.to_thread(compute, seen, options)


def compute(seen: Upcoming, options: Options) -> Plan:
    bucket = options.bucket_s
    now = seen.now.timestamp()
    start = datetime.fromtimestamp(now // bucket * bucket, UTC)
    shift = now - start.timestamp()
    # Whole buckets, from the one holding `now` to the one holding the horizon.
    span = math.ceil((shift + options.horizon_s) / bucket) * bucket
    end = start + timedelta(seconds=span)
    # A run already due and still waiting is work still to do: it counts now.
    offsets = np.maximum(seen.run_times_s, now) - start.timestamp()
    ms = np.asarray(seen.cost_ms, dtype=np.float64)[np.searchsorted(np.asarray(seen.cost_ids), seen.run_task_ids)]
    scheduled = Runs.each(offsets, ms)
    projected = project(seen.lagging, seen.now, start, end)
    result = forecast(
        scheduled, projected, horizon_s=span, bucket_s=bucket, capacity_ms=options.capacity_ms, buffer=options.buffer
    )
    return Plan(seen.now, start, options, result)
