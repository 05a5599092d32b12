"""The forecast, over numpy arrays: runs and compute per time bucket, and the instances they need.

required_instances = ceil(total_required_ms / (capacity_ms_per_instance * (1 - buffer)))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Runs:
    """Runs as parallel arrays: when each entry falls (seconds from the window's start), how many runs it stands
    for (a projected cron firing stands for every task sharing the expression) and the compute they need together."""

    offsets_s: FloatArray
    ms: FloatArray
    count: FloatArray

    @classmethod
    def each(cls, offsets_s: FloatArray, ms: FloatArray) -> Runs:
        return cls(offsets_s, ms, np.ones(len(offsets_s)))

    @classmethod
    def empty(cls) -> Runs:
        return cls(np.empty(0), np.empty(0), np.empty(0))

    @classmethod
    def concat(cls, parts: Sequence[Runs]) -> Runs:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.offsets_s for p in parts]),
            np.concatenate([p.ms for p in parts]),
            np.concatenate([p.count for p in parts]),
        )


@dataclass(frozen=True, slots=True)
class Forecast:
    bucket_s: int
    runs: IntArray  # per bucket, scheduled and projected
    projected_runs: IntArray  # per bucket, the part not yet materialized
    required_ms: FloatArray  # per bucket
    instances: IntArray  # per bucket


def required_instances(total_ms: FloatArray, capacity_ms: float, buffer: float) -> IntArray:
    return np.ceil(total_ms / (capacity_ms * (1.0 - buffer))).astype(np.int64)


def _per_bucket(runs: Runs, horizon_s: float, bucket_s: int, buckets: int) -> tuple[FloatArray, FloatArray]:
    """(runs, compute ms) per bucket; each run's bucket is found once for both sums."""
    inside = (runs.offsets_s >= 0) & (runs.offsets_s < horizon_s)
    index = (runs.offsets_s[inside] // bucket_s).astype(np.int64)

    def total(weights: FloatArray) -> FloatArray:
        return np.bincount(index, weights=weights[inside], minlength=buckets)[:buckets].astype(np.float64)

    return total(runs.count), total(runs.ms)


def forecast(
    scheduled: Runs,
    projected: Runs | None = None,
    *,
    horizon_s: float,
    bucket_s: int,
    capacity_ms: float,
    buffer: float,
) -> Forecast:
    """Buckets runs in [0, horizon) by `bucket_s` seconds; each bucket's compute sets the instances it needs."""
    buckets = int(np.ceil(horizon_s / bucket_s))
    runs, required = _per_bucket(scheduled, horizon_s, bucket_s, buckets)
    extra, extra_ms = _per_bucket(projected or Runs.empty(), horizon_s, bucket_s, buckets)
    required += extra_ms
    total_runs = np.rint(runs + extra).astype(np.int64)
    # However little compute they need, runs need a processor to run on: a bucket with any asks for one at least
    # (a backlog with none alive would otherwise ask for none, and an autoscaler at zero never start).
    instances = np.maximum(required_instances(required, capacity_ms, buffer), (total_runs > 0).astype(np.int64))
    return Forecast(bucket_s, total_runs, np.rint(extra).astype(np.int64), required, instances)
