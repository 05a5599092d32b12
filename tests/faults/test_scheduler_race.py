"""Four schedulers woken at once on one task set, taking it two tasks at a time: each run exists exactly once."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import pytest

from taskmill.models import Schedule
from taskmill.states import ScheduleKind
from tests.faults.harness import Stack
from tests.helpers import new_task, wait_until

TASKS = 36
EVERY_S = 600


def _minutes(start: datetime, end: datetime) -> list[datetime]:
    """Every whole UTC minute in [start, end)."""
    t = start.replace(second=0, microsecond=0)
    if t < start:
        t += timedelta(minutes=1)
    out = []
    while t < end:
        out.append(t)
        t += timedelta(minutes=1)
    return out


def _expected(kind: int, since: datetime, until: datetime) -> set[datetime]:
    """The runs of each kind of task in [since, until), worked out without the scheduler's code."""
    if kind == 0:  # */5 * * * * in UTC
        return {t for t in _minutes(since, until) if t.minute % 5 == 0}
    if kind == 1:  # 0 * * * * in Asia/Kolkata (UTC+05:30): half past each UTC hour
        return {t for t in _minutes(since, until) if t.minute == 30}
    step = timedelta(seconds=EVERY_S)  # every 600 s from creation, the first one interval after it
    return {since + k * step for k in range(1, 1000) if since + k * step < until}


@pytest.mark.slow
async def test_four_schedulers_racing_on_one_task_set_materialize_each_run_exactly_once(
    stack: Stack, db: asyncpg.Connection
) -> None:
    await stack.start(scheduler=4, TASKMILL_SCHEDULER_BATCH="2")
    schedules = [
        Schedule(kind=ScheduleKind.CRON, cron="*/5 * * * *"),
        Schedule(kind=ScheduleKind.CRON, cron="0 * * * *", timezone="Asia/Kolkata"),
        Schedule(kind=ScheduleKind.INTERVAL, every_seconds=EVERY_S),
    ]
    async with db.transaction():  # one commit, one NOTIFY: the four wake together
        tasks = [await new_task(db, f"race-{i}", "noop", schedule=schedules[i % 3]) for i in range(TASKS)]

    async def all_materialized() -> bool:
        # The horizon: at least the lookahead (3 h) from now; the watermark moves in whole hours.
        behind: int = await db.fetchval(
            "SELECT count(*) FROM tasks WHERE materialized_until IS NULL "
            "OR materialized_until < now() + make_interval(hours => 3)"
        )
        return behind == 0

    await wait_until(all_materialized, timeout=60, what="every task materialized to the horizon")
    await stack.quiesce(waiting={"scheduled"})  # nothing hands the runs out: they wait
    watermarks = {
        r["id"]: (r["schedule_from"], r["materialized_until"])
        for r in await db.fetch("SELECT id, schedule_from, materialized_until FROM tasks")
    }
    expected = {t.id: _expected(i % 3, *watermarks[t.id]) for i, t in enumerate(tasks)}
    report = await stack.check(expected, waiting={"scheduled"})
    assert report.runs == sum(len(times) for times in expected.values())
    # They did race: the work was shared, not done by the first to wake.
    busy = [p.name for p in stack.processes if "materialized" in p.output(1_000_000)]
    assert len(busy) >= 2, f"only {busy} materialized anything\n{stack.logs()}"
