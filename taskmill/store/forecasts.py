"""The capacity forecast kept per bucket (`capacity_forecasts`, migration 0016), to be set beside the compute the
attempts used once the bucket is over.

The capacity role records each plan's buckets that have not begun: a bucket keeps the last forecast made before it
began, whatever came after. The compute used in a bucket is the elapsed time of the attempts that finished in it
(an attempt lost with its processor has none). Forecast and use are read back in the buckets a reader asks for; a
recorded bucket of another width counts in proportion to the time it shares with each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from taskmill.db import Connection

if TYPE_CHECKING:
    from taskmill.planning.plan import Plan

Conn = Connection | asyncpg.Pool

# As far back as GET /scheduled-tasks-summary may look (`hours`, at most 48).
KEEP = timedelta(days=2)

# Only buckets that had not begun when the plan read the database ($5): a bucket under way keeps the forecast made
# before it began. Two capacity replicas may write the same buckets: the later plan wins, whichever commits last.
RECORD = """
INSERT INTO capacity_forecasts (bucket_start, bucket_seconds, runs, required_ms, made_at)
SELECT b.start, $4, b.runs, b.ms, $5
FROM unnest($1::timestamptz[], $2::int[], $3::float8[]) AS b(start, runs, ms)
WHERE b.start > $5
ON CONFLICT (bucket_start) DO UPDATE
SET bucket_seconds = excluded.bucket_seconds, runs = excluded.runs, required_ms = excluded.required_ms,
    made_at = excluded.made_at
WHERE capacity_forecasts.made_at <= excluded.made_at
"""
PURGE = "DELETE FROM capacity_forecasts WHERE bucket_start < $1"

# The forecasts that may overlap [$1, $2): a recorded bucket is at most an hour wide (TASKMILL_CAPACITY_BUCKET_S).
FORECASTS = """
SELECT bucket_start, bucket_seconds, required_ms FROM capacity_forecasts
WHERE bucket_start >= $1::timestamptz - interval '1 hour' AND bucket_start < $2
ORDER BY bucket_start
"""

# The compute used per bucket of $3 seconds from $1 on. The BRIN index on finished_at (migration 0016) keeps this to
# the pages of the last hours, whatever partition a run's scheduled day put its results in.
USED = """
SELECT date_bin(make_interval(secs => $3), finished_at, $1) AS start, sum(duration_ms)::float8 AS ms,
       count(*)::int AS attempts
FROM task_results
WHERE finished_at >= $1 AND finished_at < $2 AND duration_ms IS NOT NULL
GROUP BY 1
"""


async def record(conn: Conn, plan: Plan) -> None:
    """Keeps the plan's forecast of the buckets not yet begun, and forgets those older than KEEP."""
    await conn.execute(
        RECORD,
        plan.bucket_starts(),
        plan.forecast.runs.tolist(),
        plan.forecast.required_ms.tolist(),
        plan.options.bucket_s,
        plan.generated_at,
    )
    await conn.execute(PURGE, plan.generated_at - KEEP)


@dataclass(frozen=True, slots=True)
class PastBucket:
    start: datetime
    forecast_ms: float | None  # None: no forecast was recorded for it (the capacity role was not running)
    used_ms: float
    attempts: int  # that finished in it

    @property
    def error_ms(self) -> float | None:
        """Forecast minus use: above 0 the forecast was too high."""
        return None if self.forecast_ms is None else self.forecast_ms - self.used_ms

    @property
    def error_percent(self) -> float | None:
        """The error over the compute used; None when nothing ran (or nothing was forecast)."""
        return percent(self.error_ms, self.used_ms)


def percent(error_ms: float | None, used_ms: float) -> float | None:
    return None if error_ms is None or used_ms <= 0 else 100.0 * error_ms / used_ms


@dataclass(frozen=True, slots=True)
class Past:
    start: datetime
    bucket_s: int
    buckets: list[PastBucket]

    @property
    def used_ms(self) -> float:
        return sum(b.used_ms for b in self.buckets)

    @property
    def with_forecast(self) -> list[PastBucket]:
        """The buckets a forecast was recorded for: the ones errors are measured over."""
        return [b for b in self.buckets if b.forecast_ms is not None]

    @property
    def forecast_ms(self) -> float | None:
        known = self.with_forecast
        return sum(b.forecast_ms or 0.0 for b in known) if known else None

    @property
    def error_ms(self) -> float | None:
        """Over the buckets with a forecast: what was forecast for them minus what they used."""
        known = self.with_forecast
        return sum(b.error_ms or 0.0 for b in known) if known else None

    @property
    def error_percent(self) -> float | None:
        return percent(self.error_ms, sum(b.used_ms for b in self.with_forecast))

    @property
    def mean_absolute_error_ms(self) -> float | None:
        known = self.with_forecast
        return sum(abs(b.error_ms or 0.0) for b in known) / len(known) if known else None


async def past(conn: Conn, end: datetime, span_s: float, bucket_s: int) -> Past:
    """Whole buckets of `bucket_s` covering `span_s` up to `end` (a bucket's start: the one under way is not past),
    each with its forecast and the compute its attempts used."""
    count = math.ceil(span_s / bucket_s)
    step = timedelta(seconds=bucket_s)
    start = end - count * step
    forecast_ms: list[float | None] = [None] * count
    for row in await conn.fetch(FORECASTS, start, end):
        apportion(forecast_ms, start, bucket_s, row["bucket_start"], row["bucket_seconds"], row["required_ms"])
    used = {r["start"]: (r["ms"], r["attempts"]) for r in await conn.fetch(USED, start, end, bucket_s)}
    buckets = []
    for i, ms in enumerate(forecast_ms):
        at = start + i * step
        used_ms, attempts = used.get(at, (0.0, 0))
        buckets.append(PastBucket(at, ms, used_ms, attempts))
    return Past(start, bucket_s, buckets)


def apportion(into: list[float | None], start: datetime, bucket_s: int, at: datetime, width_s: int, ms: float) -> None:
    """Adds a recorded bucket's forecast to the buckets it overlaps, each its share of the time."""
    lo = (at - start).total_seconds()
    hi = lo + width_s
    first = max(0, math.floor(lo / bucket_s))
    last = min(len(into), math.ceil(hi / bucket_s))
    for i in range(first, last):
        shared = min(hi, (i + 1) * bucket_s) - max(lo, i * bucket_s)
        if shared > 0:
            into[i] = (into[i] or 0.0) + ms * shared / width_s
