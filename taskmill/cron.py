"""Expanding cron and interval schedules into UTC instants.

DST policy, for a cron expression evaluated in a task's timezone:
- a wall time that does not exist (spring forward gap) runs at the same offset past the gap:
  02:30 on a day that jumps from 02:00 to 03:00 runs at 03:30; if that instant is already a run, once;
- a wall time that happens twice (fall back overlap) runs once, at its first occurrence, unless the hour field
  is `*`: an expression that fires every hour keeps firing through the repeated hour (as Vixie cron does).
So a DST change neither skips a daily run nor doubles one, and `*/15 * * * *` stays every 15 minutes of real time.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

# A DST change moves wall time by at most a few hours; scanning this far past the window catches every run in it.
_DST_MARGIN = timedelta(hours=3)


class ScheduleError(ValueError):
    """A schedule that cannot be expanded: the message says why."""


def zone(name: str) -> ZoneInfo:
    try:
        if not name or "\x00" in name:
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ScheduleError(f"unknown timezone {name!r}") from exc


def _iterator(expr: str, start: datetime) -> croniter:
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(f"a cron expression has 5 fields (6 with seconds first), not {len(fields)}")
    if not expr.isascii() or "\x00" in expr:
        raise ScheduleError("a cron expression is plain ASCII")
    try:
        return croniter(expr, start, second_at_beginning=len(fields) == 6, max_years_between_matches=5)
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
        raise ScheduleError(f"invalid cron expression: {exc}") from exc


def validate_cron(expr: str) -> None:
    """Raises ScheduleError unless `expr` parses and fires at least once in the next five years."""
    if len(expr) > 256:
        raise ScheduleError("a cron expression is at most 256 characters")
    it = _iterator(expr, datetime(2026, 1, 1))
    try:
        it.get_next(datetime)
    except (CroniterBadDateError, CroniterBadCronError, ValueError) as exc:
        raise ScheduleError("the cron expression never fires") from exc


def cron_times(expr: str, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The UTC instants in [start, end) at which `expr`, read as wall time in `tz`, fires."""
    local_start = start.astimezone(tz).replace(tzinfo=None) - _DST_MARGIN
    local_stop = end.astimezone(tz).replace(tzinfo=None) + _DST_MARGIN
    it = _iterator(expr, local_start)
    fields = expr.split()
    every_hour = fields[len(fields) - 4] in ("*", "*/1")
    found: set[datetime] = set()
    try:
        while True:
            wall: datetime = it.get_next(datetime)
            if wall > local_stop:
                break
            # fold=0: the first of two equal wall times; in a gap, the offset from before the gap.
            instant = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
            if start <= instant < end:
                found.add(instant)
            if every_hour:
                second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
                if second != instant and start <= second < end:
                    found.add(second)
    except CroniterBadDateError:
        pass  # no more firings within croniter's search window
    return sorted(found)


def interval_times(every_seconds: int, anchor: datetime, start: datetime, end: datetime) -> list[datetime]:
    """anchor + k * every_seconds for every k >= 1 with the instant in [start, end): the first run comes one
    interval after the anchor (creation, edit or re-activation), like a timer, not at the anchor itself."""
    step = timedelta(seconds=every_seconds)
    k = max(1, math.ceil((start - anchor) / step))
    out = []
    t = anchor + k * step
    while t < end:
        out.append(t)
        t += step
    return out
