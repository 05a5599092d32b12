"""POST /schedule-preview: a schedule in words and its next runs, for the dashboard's form as the user types.

The runs come from taskmill.cron, the scheduler's own expansion, so a preview across a DST change shows what the
scheduler will do. The words come from cron-descriptor (5 fields, or 6 with seconds first)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from cron_descriptor import ExpressionDescriptor, FormatException, MissingFieldException, WrongArgumentException
from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import Reader
from api.errors import invalid
from taskmill.cron import interval_times, next_times, unaliased, zone
from taskmill.models import Schedule
from taskmill.states import ScheduleKind

router = APIRouter()


class SchedulePreview(BaseModel):
    description: str
    next_runs: list[datetime]  # UTC


def describe_cron(expr: str) -> str:
    expr = unaliased(expr)
    fields = expr.split()
    # Seven fields are never ambiguous: cron-descriptor would read a 6-field one with `?` as minutes-first + year.
    text = " ".join([*fields, "*"]) if len(fields) == 6 else expr
    try:
        return str(ExpressionDescriptor(text).get_description())
    except (FormatException, MissingFieldException, WrongArgumentException, ValueError, LookupError):
        return f"Cron {expr}"  # the words are a courtesy: an expression the scheduler takes is never refused here


def _every(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"Every {unit}" if n == 1 else f"Every {n} {unit}s"
    return "Every second" if seconds == 1 else f"Every {seconds} seconds"


def preview(schedule: Schedule, now: datetime, count: int) -> SchedulePreview:
    """What the scheduler would do with `schedule` saved at `now`."""
    if schedule.kind is ScheduleKind.CRON:
        assert schedule.cron is not None
        words = describe_cron(schedule.cron)
        if schedule.timezone != "UTC":
            words += f" ({schedule.timezone} time)"
        return SchedulePreview(
            description=words, next_runs=next_times(schedule.cron, zone(schedule.timezone), now, count)
        )
    if schedule.kind is ScheduleKind.INTERVAL:
        assert schedule.every_seconds is not None
        step = timedelta(seconds=schedule.every_seconds)
        runs = interval_times(schedule.every_seconds, now, now, now + step * count + timedelta(microseconds=1))
        return SchedulePreview(description=f"{_every(schedule.every_seconds)}, from when it is saved", next_runs=runs)
    if schedule.kind is ScheduleKind.ONCE:
        assert schedule.at is not None
        at = schedule.at.astimezone(UTC)
        return SchedulePreview(description=f"Once, at {at:%Y-%m-%d %H:%M:%S} UTC", next_runs=[max(at, now)])
    return SchedulePreview(description="Once, as soon as it is saved", next_runs=[now])


# How far from now `start` may be: the preview of a DST change next spring, not of the year 9999.
MAX_START_OFFSET = timedelta(days=3660)


@router.post("/schedule-preview", response_model=SchedulePreview)
async def schedule_preview(
    body: Schedule,
    _: Reader,
    count: Annotated[int, Query(ge=1, le=50, description="how many next runs")] = 5,
    start: Annotated[datetime | None, Query(description="preview from this instant instead of now")] = None,
) -> SchedulePreview:
    """The schedule in words and its next `count` runs (UTC), as the scheduler would make them."""
    now = datetime.now(UTC).replace(microsecond=0)
    if start is not None:
        if start.tzinfo is None:
            raise invalid(("start",), "give a timezone offset, e.g. 2027-03-27T00:00:00Z")
        try:
            start = start.astimezone(UTC)
        except (OverflowError, ValueError):
            raise invalid(("start",), f"is more than {MAX_START_OFFSET.days} days from now") from None
        if abs(start - now) > MAX_START_OFFSET:
            raise invalid(("start",), f"is more than {MAX_START_OFFSET.days} days from now")
    elif reason := body.late(now):
        # Saving this schedule now would be refused the same way (POST /tasks).
        raise invalid(("at",), reason)
    # Expanding a cron expression is CPU work (an every-second one near a DST change scans its margin): off the loop.
    return await asyncio.to_thread(preview, body, start or now, count)
