"""A recurring task's occurrences in a range, placed in its window: what the scheduler materializes and what a
backfill makes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from taskmill.cron import cron_times, interval_times, next_times, unaliased, zone
from taskmill.models import Task
from taskmill.spread import placed
from taskmill.states import ScheduleKind

# Ranges are expanded a chunk at a time, so a bounded caller never expands a per-second schedule over a year.
_CHUNK = timedelta(hours=6)
# first_runs expands windows that hold at most this many runs (or the runs it was asked for, if more).
_WINDOW_RUNS = 1000


def run_times(task: Task, start: datetime, end: datetime) -> list[datetime]:
    """The occurrences in [start, end), at their nominal times (ScheduleError when the schedule cannot expand)."""
    if task.schedule_kind is ScheduleKind.CRON and task.cron:
        return cron_times(task.cron, zone(task.timezone), start, end)
    if task.schedule_kind is ScheduleKind.INTERVAL and task.every_seconds:
        return interval_times(task.every_seconds, task.schedule_from, start, end)
    return []


def occurrences(task: Task, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """The occurrences in [start, end), each at its placed time, at most `limit` of them (stops there)."""
    found: list[datetime] = []
    at = start
    while at < end and len(found) < limit:
        upto = min(end, at + _CHUNK)
        found += run_times(task, at, upto)
        at = upto
    return [placed(task.id, t, task.window_seconds) for t in found[:limit]]


def densest_s(cron: str | None, every_seconds: int | None) -> float:
    """The shortest time between two occurrences a schedule can have: its interval, a second for a cron with a
    seconds field, a minute for any other."""
    if every_seconds:
        return float(every_seconds)
    return 1.0 if cron and len(unaliased(cron).split()) == 6 else 60.0


def period_s(task: Task, at: datetime) -> float | None:
    """How often the task runs from `at`: the time between its next two occurrences (None: fewer than two)."""
    if task.schedule_kind is ScheduleKind.INTERVAL and task.every_seconds:
        return float(task.every_seconds)
    if task.schedule_kind is ScheduleKind.CRON and task.cron:
        runs = next_times(task.cron, zone(task.timezone), at, 2)
        return (runs[1] - runs[0]).total_seconds() if len(runs) == 2 else None
    return None


def first_runs(
    expand: Callable[[datetime, datetime], list[datetime]], densest: float, start: datetime, end: datetime, limit: int
) -> tuple[list[datetime], datetime]:
    """The first `limit` occurrences in [start, end) (`expand(a, b)` gives those in [a, b)), and the watermark they
    reach: `end` when they are all of them, else the first occurrence left out, so that every occurrence before the
    watermark is in the list. Windows of at most `_WINDOW_RUNS` (or `limit`) runs at the `densest` rate are
    expanded in turn, so a catch-up over days of a per-second schedule never holds more than that at once."""
    found: list[datetime] = []
    step = timedelta(seconds=densest * max(limit, _WINDOW_RUNS))
    at = start
    while at < end:
        upto = end if end - at <= step else at + step  # (a yearly interval's step would pass the year 9999)
        found += expand(at, upto)
        at = upto
        if len(found) > limit:
            return found[:limit], found[limit]
        if len(found) == limit:
            return found, at
    return found, max(start, end)
