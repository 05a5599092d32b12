"""Turning recurring tasks into rows of task_schedule, from the start of the UTC day to the horizon."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from taskmill.cron import ScheduleError
from taskmill.metrics import MATERIALIZED
from taskmill.models import Task
from taskmill.schedules import run_times
from taskmill.settings import Settings
from taskmill.spread import placed
from taskmill.store.schedule import advance_watermarks, insert_runs, tasks_to_materialize

log = logging.getLogger(__name__)

_NEAR_TERM = timedelta(minutes=2)


def window(now: datetime, lookahead_hours: float) -> tuple[datetime, datetime]:
    """From the start of the current UTC day to its end, or further so `lookahead_hours` always stay covered.

    The horizon moves in whole hours, so a task's runs are expanded once an hour, not once a minute.
    """
    day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    ahead = hour + timedelta(hours=lookahead_hours + 1)
    return day_start, max(day_start + timedelta(days=1), ahead)


def _expand(
    batch: list[tuple[Task, datetime | None]], day_start: datetime, horizon: datetime, floor: datetime
) -> tuple[list[int], list[datetime]]:
    """Each task's occurrences from its watermark (or the start of the day for a task never expanded) to the
    horizon, placed in its window. A watermark before today (the scheduler was down across midnight) is caught up
    from, back to `floor`: every expected occurrence becomes a row, and the claim applies the misfire policy."""
    task_ids: list[int] = []
    times: list[datetime] = []
    for task, until in batch:
        start = max(task.schedule_from, until if until is not None else day_start, floor)
        try:
            found = run_times(task, start, horizon)
        except ScheduleError as exc:
            log.error("cannot expand the schedule of task %s: %s", task.id, exc, extra={"task_id": task.id})
            continue
        if task.window_seconds > 1:
            found = [placed(task.id, at, task.window_seconds) for at in found]
        task_ids.extend([task.id] * len(found))
        times.extend(found)
    return task_ids, times


async def materialize(pool: asyncpg.Pool, settings: Settings, now: datetime) -> int:
    """Inserts every missing run up to the horizon, a batch of tasks per transaction; returns runs inserted.

    The next few minutes go first, in short transactions, so a new or edited task's first runs exist at once
    even when the rest of its day is tens of thousands of rows.
    """
    day_start, horizon = window(now, settings.lookahead_hours)
    near = min(horizon, now + _NEAR_TERM)
    return await _materialize_until(pool, settings, day_start, near) + await _materialize_until(
        pool, settings, day_start, horizon
    )


async def _materialize_until(pool: asyncpg.Pool, settings: Settings, day_start: datetime, horizon: datetime) -> int:
    inserted = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            batch = await tasks_to_materialize(
                conn,
                horizon,
                settings.scheduler_batch,
                settings.scheduler_segments,
                settings.scheduler_segment,
            )
            if not batch:
                return inserted
            # croniter is pure Python: expanding a large batch would stall this process's other work.
            floor = day_start - timedelta(days=settings.retention_days)
            task_ids, times = await asyncio.to_thread(_expand, batch, day_start, horizon, floor)
            new = await insert_runs(conn, task_ids, times)
            MATERIALIZED.inc(new)
            inserted += new
            await advance_watermarks(conn, [task.id for task, _ in batch], horizon)
