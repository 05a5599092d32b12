"""The forecast, over numpy arrays: runs and compute per time bucket, and the instances they need.

required_instances = ceil(total_required_ms / (capacity_ms_per_instance * (1 - buffer)))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Forecast:
    bucket_s: int
    runs: IntArray  # per bucket
    required_ms: FloatArray  # per bucket
    instances: IntArray  # per bucket


def required_instances(total_ms: FloatArray, capacity_ms: float, buffer: float) -> IntArray:
    return np.ceil(total_ms / (capacity_ms * (1.0 - buffer))).astype(np.int64)


def forecast(
    offsets_s: FloatArray, run_ms: FloatArray, *, horizon_s: float, bucket_s: int, capacity_ms: float, buffer: float
) -> Forecast:
    """Buckets runs `offsets_s` seconds from now (each needing `run_ms`) into [0, horizon) by `bucket_s`."""
    buckets = int(np.ceil(horizon_s / bucket_s))
    inside = (offsets_s >= 0) & (offsets_s < horizon_s)
    index = (offsets_s[inside] // bucket_s).astype(np.int64)
    runs = np.bincount(index, minlength=buckets).astype(np.int64)
    required = np.bincount(index, weights=run_ms[inside], minlength=buckets).astype(np.float64)
    return Forecast(bucket_s, runs, required, required_instances(required, capacity_ms, buffer))
