"""Runs of recurring tasks that are not rows yet, projected from their schedules, so the forecast is whole at any
time of day (midnight included, and while the scheduler is behind or down).

Each task's runs from its watermark (before it every run is a row of task_schedule, counted there) to the end of
the window are projected, as the scheduler will insert them: from the start of the current UTC day at the earliest
and never before the task's schedule starts. A run whose time has passed (the scheduler is behind) will run as
soon as it is inserted, so it counts now.

Interval tasks are arithmetic over arrays. Cron expressions are expanded once per distinct (expression, timezone),
however many tasks share them, and each firing is weighted by the tasks that have reached it: tasks sorted by
their start, a cumulative sum, and one `searchsorted` per expression.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from taskmill.cron import ScheduleError, cron_times, zone
from taskmill.planning.forecast import FloatArray, IntArray, Runs
from taskmill.spread import offsets_s
from taskmill.store.capacity import LaggingTask

log = logging.getLogger(__name__)


def _epoch(t: datetime) -> float:
    return t.timestamp()


def _start(task: LaggingTask, day_start: datetime) -> datetime:
    return max(day_start, task.schedule_from, task.materialized_until or day_start)


def _offsets(times: FloatArray, now: datetime, origin: datetime) -> FloatArray:
    """Seconds from `origin`, a time already past counting as `now`."""
    return np.maximum(times, _epoch(now)) - _epoch(origin)


def project(tasks: Sequence[LaggingTask], now: datetime, origin: datetime, end: datetime) -> Runs:
    """The runs of `tasks` before `end` not yet materialized, as offsets in seconds from `origin`."""
    day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    parts = [_project_intervals([t for t in tasks if t.kind == "interval"], day_start, now, origin, end)]
    by_expression: dict[tuple[str, str, bool], list[LaggingTask]] = defaultdict(list)
    for task in tasks:
        if task.kind == "cron" and task.cron:
            by_expression[(task.cron, task.timezone, task.window_seconds > 1)].append(task)
    for (expr, tz, spread), group in by_expression.items():
        project_one = _project_spread_cron if spread else _project_cron
        try:
            parts.append(project_one(expr, tz, group, day_start, now, origin, end))
        except ScheduleError as exc:  # stored before a validation rule existed: the scheduler logs it too
            log.warning("cannot project cron %r (%s): %s", expr, tz, exc)
    return Runs.concat(parts)


def _project_intervals(
    tasks: Sequence[LaggingTask], day_start: datetime, now: datetime, origin: datetime, end: datetime
) -> Runs:
    """anchor + k * every for k >= 1 (as taskmill.cron.interval_times), for every task at once."""
    if not tasks:
        return Runs.empty()
    anchor = np.array([_epoch(t.schedule_from) for t in tasks])
    step = np.array([float(t.every_seconds or 0) for t in tasks])
    start = np.array([_epoch(_start(t, day_start)) for t in tasks])
    ms = np.array([t.ms for t in tasks])
    first = np.maximum(1.0, np.ceil((start - anchor) / step))
    stop = np.ceil((_epoch(end) - anchor) / step)  # first k past the end
    count = np.maximum(0, stop - first).astype(np.int64)
    total = int(count.sum())
    if total == 0:
        return Runs.empty()
    # k for every run: `first` of its task plus its position within the task's runs.
    task_of = np.repeat(np.arange(len(tasks)), count)
    position = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    k = first[task_of] + position
    times = _placed(tasks, task_of, anchor[task_of] + k * step[task_of])
    return Runs(_offsets(times, now, origin), ms[task_of], np.ones(total))


def _placed(tasks: Sequence[LaggingTask], task_of: IntArray, times: FloatArray) -> FloatArray:
    """`times` (run i one of `tasks[task_of[i]]`), each moved to its place in its task's window (spread.py)."""
    ids = np.array([t.id for t in tasks], dtype=np.int64)[task_of]
    windows = np.array([t.window_seconds for t in tasks], dtype=np.int64)[task_of]
    return times + offsets_s(ids, times.astype(np.int64), windows).astype(np.float64)


def _firings(expr: str, tz: str, starts: FloatArray, end: datetime) -> FloatArray:
    """The expression's firings from the earliest of `starts` to `end`, in epoch seconds."""
    earliest = datetime.fromtimestamp(float(starts.min()), UTC)
    return np.array([_epoch(t) for t in cron_times(expr, zone(tz), earliest, end)])


def _project_spread_cron(
    expr: str,
    tz: str,
    tasks: Sequence[LaggingTask],
    day_start: datetime,
    now: datetime,
    origin: datetime,
    end: datetime,
) -> Runs:
    """Tasks whose runs are spread: each firing of each task at its own placed time (an occurrence is one run)."""
    starts = np.array([_epoch(_start(t, day_start)) for t in tasks])
    firings = _firings(expr, tz, starts, end)
    if firings.size == 0:
        return Runs.empty()
    task_of, firing_of = np.nonzero(firings[None, :] >= starts[:, None])
    times = _placed(tasks, task_of, firings[firing_of])
    ms = np.array([t.ms for t in tasks])[task_of]
    return Runs(_offsets(times, now, origin), ms, np.ones(len(times)))


def _project_cron(
    expr: str,
    tz: str,
    tasks: Sequence[LaggingTask],
    day_start: datetime,
    now: datetime,
    origin: datetime,
    end: datetime,
) -> Runs:
    starts = np.array([_epoch(_start(t, day_start)) for t in tasks])
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    cumulative_ms = np.cumsum(np.array([t.ms for t in tasks])[order])
    firings = _firings(expr, tz, starts, end)
    if firings.size == 0:
        return Runs.empty()
    # For each firing, how many tasks (and how much compute) have started by then.
    reached = np.searchsorted(starts, firings, side="right")
    keep = reached > 0
    reached = reached[keep]
    return Runs(_offsets(firings[keep], now, origin), cumulative_ms[reached - 1], reached.astype(np.float64))
