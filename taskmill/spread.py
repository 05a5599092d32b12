"""Spreading (a task's `window_seconds`): each occurrence at t is placed at t + offset, the offset in [0, window)
drawn from the task and the occurrence by a fixed hash. Every replica, every restart, the scheduler, a backfill and
the capacity forecast place an occurrence at the same instant, so a thousand tasks at :00 spread over the window and
none runs twice.

The hash is integer arithmetic on 32 bits (a multiply-xorshift mix of the task id and the occurrence's epoch
second), written once for Python ints and once for numpy arrays, which the tests hold equal.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

_M1 = 0x9E3779B1
_M2 = 0x85EBCA77
_MASK = 0xFFFFFFFF


def offset_s(task_id: int, epoch_s: int, window_s: int) -> int:
    """The offset in whole seconds, in [0, window_s), of the occurrence at `epoch_s` of task `task_id`."""
    if window_s <= 1:
        return 0
    h = (task_id * _M1 + epoch_s * _M2) & _MASK
    h ^= h >> 15
    h = (h * _M1) & _MASK
    h ^= h >> 13
    return h % window_s


def placed(task_id: int, at: datetime, window_s: int) -> datetime:
    """The instant the occurrence at `at` runs (whole-second occurrences; a fraction is kept)."""
    return at + timedelta(seconds=offset_s(task_id, int(at.timestamp()), window_s))


def offsets_s(task_ids: npt.NDArray[np.int64], epochs_s: npt.NDArray[np.int64], windows_s: npt.NDArray[np.int64]
              ) -> npt.NDArray[np.int64]:  # fmt: skip
    """offset_s over arrays (a window of 0 or 1 gives 0)."""
    mask = np.uint64(_MASK)
    h = (task_ids.astype(np.uint64) * np.uint64(_M1) + epochs_s.astype(np.uint64) * np.uint64(_M2)) & mask
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(_M1)) & mask
    h ^= h >> np.uint64(13)
    windows = np.maximum(windows_s, 1).astype(np.uint64)
    return np.where(windows_s > 1, h % windows, 0).astype(np.int64)
