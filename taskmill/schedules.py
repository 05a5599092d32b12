"""A recurring task's occurrences in a range, placed in its window: what the scheduler materializes and what a
backfill makes."""

from __future__ import annotations

from datetime import datetime, timedelta

from taskmill.cron import cron_times, interval_times, zone
from taskmill.models import Task
from taskmill.spread import placed
from taskmill.states import ScheduleKind

# Ranges are expanded a chunk at a time, so a bounded caller never expands a per-second schedule over a year.
_CHUNK = timedelta(hours=6)


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
