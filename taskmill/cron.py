"""Expanding cron and interval schedules into UTC instants.

DST policy, for a cron expression evaluated in a task's timezone:
- a wall time that does not exist (spring forward gap) runs at the same offset past the gap:
  02:30 on a day that jumps from 02:00 to 03:00 runs at 03:30; if that instant is already a run, once;
- a wall time that happens twice (fall back overlap) runs once, at its first occurrence, unless the hour field
  is `*`: an expression that fires every hour keeps firing through the repeated hour (as Vixie cron does).
  An occurrence moved past a gap never leaves the hours its expression names when it can stay in them: moved to
  an hour the expression does not name, it runs at the end of the gap instead, if that hour is named
  (`*/15 2-3 * * *` on a day that jumps from 02:45 to 03:45 runs once at 03:45, not at 04:00-04:30).
So a DST change neither skips a daily run nor doubles one, and `*/15 * * * *` stays every 15 minutes of real time.

Syntax beyond the five fields (or six, seconds first): `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`,
`@yearly` (`@annually`); in the day of month `L` (the last day), `nW` (the weekday nearest day n, within its month)
and `LW` (the last weekday); in the day of week `nL` (the last such day of the month: `5L` the last Friday).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

# A DST change moves wall time by at most a few hours; scanning this far past the window catches every run in it.
_DST_MARGIN = timedelta(hours=3)
# Windows up to this long are checked for a constant UTC offset, hour by hour (no zone changes twice within an
# hour); then the scan needs no margin, which a per-second cron would otherwise pay for 6 hours of firings.
_CHECKED_WINDOW = timedelta(days=2)
_STEP = timedelta(hours=1)
# next_times looks for the next runs in a window that starts at a minute and grows eightfold until it holds
# enough: an every-second expression stays cheap, a yearly one is still found.
_FIRST_WINDOW = timedelta(minutes=1)
_LONGEST_WINDOW = timedelta(days=366 * 40)


class ScheduleError(ValueError):
    """A schedule that cannot be expanded: the message says why."""


@functools.cache
def _iana_names() -> frozenset[str]:
    # ZoneInfo opens any TZif file under the zone path, and a path too: `localtime` (the host's own clock),
    # `posix/...`, `right/...`. Only the names of the time zone database are accepted, so a task means the same
    # zone on every host and a name never reaches the filesystem unchecked.
    return frozenset(available_timezones() - {"localtime"})


def zone(name: str) -> ZoneInfo:
    if name not in _iana_names():
        raise ScheduleError(f"unknown timezone {name[:64]!r}: give an IANA name such as UTC or Europe/Paris")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ScheduleError(f"unknown timezone {name!r}") from exc


_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# Every month's last weekday is one of its days 26 to 31: LW fires on those that are weekdays, then keeps the last.
_LAST_WEEKDAY_DAYS = "26-31"


@dataclass(frozen=True, slots=True)
class Spelled:
    """An expression as croniter reads it, and whether its day of month was `LW` (filtered after expansion)."""

    expr: str
    last_weekday: bool


def unaliased(expr: str) -> str:
    """`@hourly` and its kin as the five fields they stand for; any other expression as it is."""
    return _ALIASES.get(expr.strip().lower(), expr)


def spelled(expr: str) -> Spelled:
    """The aliases and the forms croniter lacks, rewritten: `nL` in the day of week is croniter's `Ln`, and `LW`
    is days 26-31 on weekdays, of which cron_times keeps each month's last."""
    expr = unaliased(expr)
    fields = expr.split()
    if len(fields) not in (5, 6):
        return Spelled(expr, False)
    dom, dow = len(fields) - 3, len(fields) - 1
    fields[dow] = ",".join(
        f"L{item[0]}" if len(item) == 2 and item[0].isdigit() and item[1] in "Ll" else item
        for item in fields[dow].split(",")
    )
    last_weekday = fields[dom].upper() == "LW"
    if last_weekday:
        if fields[dow] != "*":
            raise ScheduleError("invalid cron expression: day of month: LW cannot go with a day of week")
        fields[dom], fields[dow] = _LAST_WEEKDAY_DAYS, "1-5"
    return Spelled(" ".join(fields), last_weekday)


def _last_weekday(day: datetime) -> bool:
    """Whether `day` is the last weekday (Monday to Friday) of its month."""
    following = day + timedelta(days=1)
    while following.month == day.month:
        if following.weekday() < 5:
            return False
        following += timedelta(days=1)
    return day.weekday() < 5


def _iterator(expr: str, start: datetime) -> croniter:
    spelling = spelled(expr)
    expr = spelling.expr
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(f"a cron expression has 5 fields (6 with seconds first), not {len(fields)}")
    if not expr.isascii() or "\x00" in expr:
        raise ScheduleError("a cron expression is plain ASCII")
    try:
        # day_or=False: LW's "days 26-31 that are weekdays" needs both fields to hold, and an expression that
        # restricts both otherwise keeps Vixie cron's either-or.
        day_or = not spelling.last_weekday
        return croniter(expr, start, second_at_beginning=len(fields) == 6, max_years_between_matches=5, day_or=day_or)
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
        raise ScheduleError(f"invalid cron expression: {exc}") from exc


# (name, lowest, highest) of each field; a 6-field expression starts with seconds.
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_SECONDS = ("second", 0, 59)


def _check_text(expr: str) -> None:
    for i, char in enumerate(expr):
        if not " " <= char <= "~":
            hint = (
                ", digits are 0-9" if char.isdigit() else ", fields are separated by spaces" if char.isspace() else ""
            )
            raise ScheduleError(f"{char!r} at position {i} is not allowed: a cron expression is printable ASCII{hint}")
    if expr.strip(" ") and expr != expr.strip(" "):
        raise ScheduleError("a cron expression cannot start or end with spaces")


def _check_field(value: str, name: str, low: int, high: int) -> None:
    """The faults croniter reports without naming the field: numbers out of range, zero steps, random values."""
    for item in value.split(","):
        if item[:1] in ("H", "h", "R", "r"):
            # croniter's hashed (H) and random (R) values differ between processes: replicas would disagree.
            raise ScheduleError(f"invalid cron expression: {name}: hashed (H) and random (R) values are not supported")
        base, slash, step = item.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise ScheduleError(
                f"invalid cron expression: {name}: the step {step!r} is not a whole number of at least 1"
            )
        for bound in base.split("-"):
            if bound.isdigit() and not low <= int(bound) <= high:
                raise ScheduleError(f"invalid cron expression: {name}: {bound} is out of range {low}-{high}")


def validate_cron(expr: str) -> None:
    """Raises ScheduleError unless `expr` parses and fires at least once in the next five years."""
    if len(expr) > 256:
        raise ScheduleError("a cron expression is at most 256 characters")
    _check_text(expr)
    fields = expr.split()
    if len(fields) in (5, 6):
        names = (_SECONDS, *_FIELDS) if len(fields) == 6 else _FIELDS
        for value, (name, low, high) in zip(fields, names, strict=True):
            _check_field(value, name, low, high)
    it = _iterator(expr, datetime(2026, 1, 1))
    try:
        it.get_next(datetime)
    except (CroniterBadDateError, CroniterBadCronError, ValueError) as exc:
        raise ScheduleError("the cron expression never fires") from exc


def cron_times(expr: str, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The UTC instants in [start, end) at which `expr`, read as wall time in `tz`, fires."""
    # croniter's next firing is strictly after its start: a second back keeps a run exactly at `start`.
    margin = timedelta(seconds=1) if _fixed_offset(tz, start - _DST_MARGIN, end + _DST_MARGIN) else _DST_MARGIN
    local_start = start.astimezone(tz).replace(tzinfo=None) - margin
    local_stop = end.astimezone(tz).replace(tzinfo=None) + margin
    it = _iterator(expr, local_start)
    spelling = spelled(expr)
    fields = spelling.expr.split()
    every_hour = fields[len(fields) - 4] in ("*", "*/1")
    hours: list[int | str] = list(it.expanded[1])
    found: set[datetime] = set()
    try:
        while True:
            wall: datetime = it.get_next(datetime)
            if wall > local_stop:
                break
            if spelling.last_weekday and not _last_weekday(wall):
                continue
            # fold=0: the first of two equal wall times; in a gap, the offset from before the gap.
            instant = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
            if "*" not in hours and instant.astimezone(tz).hour not in hours:
                instant = _gap_end_if_named(wall, instant, tz, hours)
            if start <= instant < end:
                found.add(instant)
            if every_hour:
                second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
                if second != instant and start <= second < end:
                    found.add(second)
    except CroniterBadDateError:
        pass  # no more firings within croniter's search window
    return sorted(found)


def _gap_end_if_named(wall: datetime, moved: datetime, tz: ZoneInfo, hours: list[int | str]) -> datetime:
    """A wall time in a spring-forward gap, moved past it to an hour its expression does not name: the end of the
    gap instead when that hour is named (the moved instant otherwise: a daily 02:30 in a gap of 02:00-03:00 still
    runs once, at 03:30)."""
    before = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)  # the other reading of the missing wall time
    low, high = min(before, moved), max(before, moved)
    if low.astimezone(tz).utcoffset() == high.astimezone(tz).utcoffset():
        return moved  # not in a gap: the hour is simply not named (no such firing is made)
    while high - low > timedelta(seconds=1):  # the transition, to the second
        mid = low + (high - low) / 2
        if mid.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
            low = mid
        else:
            high = mid
    end = high.replace(microsecond=0) + (timedelta(seconds=1) if high.microsecond else timedelta(0))
    return end if end.astimezone(tz).hour in hours else moved


def next_times(expr: str, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    """The first `count` instants at or after `after` at which `expr` fires, by cron_times (its DST policy).

    The scan starts near the first run rather than at `after`, so "every second of January 1st" does not walk
    the months before it.
    """
    first = _first_firing(expr, tz, after)
    start = max(after, first - _DST_MARGIN)
    window = first - start + _FIRST_WINDOW
    while True:
        runs = cron_times(expr, tz, start, start + window)
        if len(runs) >= count or window >= _LONGEST_WINDOW:
            return runs[:count]
        window *= 8


def _first_firing(expr: str, tz: ZoneInfo, after: datetime) -> datetime:
    """About when the first run at or after `after` is: croniter's next wall time read with the zone's offset
    then (one step, cheap even for a yearly expression); a DST change moves the real run by less than the margin."""
    local = after.astimezone(tz).replace(tzinfo=None) - _DST_MARGIN
    try:
        wall: datetime = _iterator(expr, local).get_next(datetime)
    except (CroniterBadDateError, ValueError, OverflowError):
        return after
    return max(after, wall.replace(tzinfo=tz).astimezone(UTC))


def _fixed_offset(tz: ZoneInfo, start: datetime, end: datetime) -> bool:
    """Whether `tz` keeps one UTC offset from `start` to `end` (False for windows too long to check)."""
    if end - start > _CHECKED_WINDOW:
        return False
    offset = start.astimezone(tz).utcoffset()
    at = start
    while at < end:
        at = min(at + _STEP, end)
        if at.astimezone(tz).utcoffset() != offset:
            return False
    return True


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


@functools.lru_cache(maxsize=1024)
def shortest_gap_s(expr: str, timezone: str, count: int = 200) -> float | None:
    """The shortest time between two of the next `count` firings of `expr` in `timezone` (None: fewer than two), the
    most a spread window may be: a wider one could place an occurrence at or past the next (taskmill/spread.py)."""
    runs = next_times(expr, zone(timezone), datetime.now(UTC), count)
    return min((b - a).total_seconds() for a, b in itertools.pairwise(runs)) if len(runs) > 1 else None
