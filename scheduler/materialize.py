"""Turning recurring tasks into rows of task_schedule: the rest of the UTC day and `lookahead_hours` past now, or,
for a task that runs more often than `scheduler_runs_ahead` times in that, as far as those runs reach.

Work is bounded whatever the schedules: a transaction locks at most `scheduler_batch` tasks and inserts at most
`scheduler_batch_runs` runs; a task with more to do (a catch-up over days of a per-second task) goes on in the next
one. A per-second task holds an hour of runs ahead and is topped up every half hour, not a day of them expanded at
once; the capacity forecast projects its runs past its watermark (taskmill/planning/projection.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

import asyncpg

from taskmill.cron import ScheduleError
from taskmill.metrics import MATERIALIZED
from taskmill.models import Task
from taskmill.schedules import densest_s, first_runs, period_s, run_times
from taskmill.settings import Settings
from taskmill.spread import placed
from taskmill.store.schedule import advance_watermarks, insert_runs, tasks_to_materialize

log = logging.getLogger(__name__)

# Every task's runs this far ahead are made first, in a pass of their own, so a new or edited task's first runs
# exist at once; the scheduler's lag is measured against it.
NEAR_TERM = timedelta(minutes=2)

# (expanded when its watermark is before the first, up to the second) of a task in a pass.
Reach = Callable[[Task], tuple[datetime, datetime]]


def window(now: datetime, lookahead_hours: float) -> tuple[datetime, datetime]:
    """From the start of the current UTC day to its end, or further so `lookahead_hours` always stay covered.

    The horizon moves in whole hours, so a task's runs are expanded once an hour, not once a minute.
    """
    day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    ahead = hour + timedelta(hours=lookahead_hours + 1)
    return day_start, max(day_start + timedelta(days=1), ahead)


def near_term(now: datetime, lookahead_hours: float) -> datetime:
    """How far every task's runs are made first, and what the scheduler's lag is measured against."""
    return min(window(now, lookahead_hours)[1], now + NEAR_TERM)


def reach(
    task: Task, now: datetime, horizon: datetime, runs_ahead: int, interval_s: float
) -> tuple[datetime, datetime]:
    """How far the main pass materializes `task`: (it is expanded when its watermark is before the first, up to
    the second). To the horizon, unless more than `runs_ahead` of its runs fall before it: then as far as those
    reach, topped up once half of that is left. Never less than two passes and the near term ahead, so its runs
    are rows before they fall due even if a pass is missed (ScheduleError when its schedule cannot expand)."""
    left = (horizon - now).total_seconds()
    if left <= densest_s(task.cron, task.every_seconds) * runs_ahead:
        return horizon, horizon  # it cannot run that often: no need to ask how often it does
    period = period_s(task, now)
    if period is None or period * runs_ahead >= left:
        return horizon, horizon
    span = max(timedelta(seconds=period * runs_ahead), 2 * (NEAR_TERM + timedelta(seconds=interval_s)))
    return min(horizon, now + span / 2), min(horizon, now + span)


@dataclass(frozen=True, slots=True)
class _Pass:
    day_start: datetime
    floor: datetime  # no occurrence before it is made (retention): how far a catch-up goes back
    before: datetime  # the tasks whose watermark is before it are looked at
    reach: Reach


@dataclass(frozen=True, slots=True)
class _Expanded:
    task_id: int
    times: list[datetime]  # placed in the task's window
    until: datetime  # its new watermark


async def materialize(pool: asyncpg.Pool, settings: Settings, now: datetime) -> int:
    """Inserts every missing run each task needs now, a bounded batch per transaction; returns runs inserted.

    The next few minutes of every task go first, in short transactions, so a new or edited task's first runs
    exist at once even when the rest of its day is tens of thousands of rows.
    """
    day_start, horizon = window(now, settings.lookahead_hours)
    floor = day_start - timedelta(days=settings.retention_days)
    near = near_term(now, settings.lookahead_hours)
    main = partial(
        reach,
        now=now,
        horizon=horizon,
        runs_ahead=settings.scheduler_runs_ahead,
        interval_s=settings.scheduler_interval_s,
    )
    first = _Pass(day_start, floor, near, lambda _task: (near, near))
    return await _run(pool, settings, first) + await _run(pool, settings, _Pass(day_start, floor, horizon, main))


async def _run(pool: asyncpg.Pool, settings: Settings, p: _Pass) -> int:
    """Walks the tasks whose watermark is before `p.before` once, in id order, each as far as `p.reach` says."""
    inserted, after, resume = 0, 0, 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            batch = await tasks_to_materialize(
                conn, p.before, settings.scheduler_batch, settings.scheduler_segments, settings.scheduler_segment, after
            )
            if not batch:
                return inserted
            # croniter is pure Python: expanding a large batch would stall this process's other work.
            done, after, resume = await asyncio.to_thread(_expand, batch, p, settings.scheduler_batch_runs, resume)
            new = await insert_runs(
                conn, [e.task_id for e in done for _ in e.times], [t for e in done for t in e.times]
            )
            await advance_watermarks(conn, [e.task_id for e in done], [e.until for e in done])
        MATERIALIZED.inc(new)
        inserted += new


def _expand(
    batch: Sequence[tuple[Task, datetime | None]], p: _Pass, budget: int, resume: int
) -> tuple[list[_Expanded], int, int]:
    """The tasks' runs from their watermark (or the start of the day for a task never expanded) as far as the pass
    reaches, placed in their window, at most `budget` of them; the id the walk goes on after, and the task the
    budget stopped short of its reach (0: none), which goes on to it in the next transaction from where it stopped
    (`resume`). A watermark before today (the scheduler was down across midnight) is caught up from, back to
    `floor`: every expected occurrence becomes a row, and the claim applies the misfire policy."""
    done: list[_Expanded] = []
    after = 0
    for task, until in batch:
        if budget <= 0:
            break
        after = task.id
        try:
            below, target = p.reach(task)
            if until is not None and until >= (target if task.id == resume else below):
                continue  # a frequent task with enough runs ahead
            start = max(task.schedule_from, until if until is not None else p.day_start, p.floor)
            found, reached = first_runs(
                partial(run_times, task), densest_s(task.cron, task.every_seconds), start, target, budget
            )
        except ScheduleError as exc:
            log.error("cannot expand the schedule of task %s: %s", task.id, exc, extra={"task_id": task.id})
            done.append(_Expanded(task.id, [], p.before))
            continue
        if task.window_seconds > 1:
            found = [placed(task.id, at, task.window_seconds) for at in found]
        done.append(_Expanded(task.id, found, reached))
        budget -= len(found)
        if reached < target:  # the budget ran out within this task
            return done, task.id - 1, task.id
    return done, after, 0
