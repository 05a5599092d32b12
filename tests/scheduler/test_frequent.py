"""Frequent tasks under a controlled clock: a task that runs more often than `scheduler_runs_ahead` times before the
horizon holds that many runs ahead and is topped up once half are left; every statement inserts a bounded number
of runs and commits, a catch-up included; replicas, spreading and the near term work as for any task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import pytest

import scheduler.service
from scheduler.materialize import materialize, near_term, reach
from scheduler.workflows import horizon, materialize_workflows
from taskmill.cron import interval_times
from taskmill.db import create_pool
from taskmill.logs import described
from taskmill.models import Schedule, Task
from taskmill.schedules import first_runs
from taskmill.settings import Settings
from taskmill.spread import placed
from taskmill.states import ScheduleKind
from taskmill.store.schedule import insert_runs, lag_s
from taskmill.store.workflows import create_workflow, invoke
from taskmill.workflows import WorkflowCreate
from tests.helpers import new_task

# A morning well ahead of the real day: the clock the scheduler is given.
T0 = (datetime.now(UTC) + timedelta(days=40)).replace(hour=10, minute=0, second=0, microsecond=0)
EVERY_SECOND = Schedule(kind=ScheduleKind.INTERVAL, every_seconds=1)
S, MINUTE, HOUR = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)


def _task(schedule: Schedule, **fields: Any) -> Task:
    spec: dict[str, Any] = {
        "id": 1, "name": "t", "type": "noop", "payload": {}, "schedule_kind": ScheduleKind(schedule.kind),
        "cron": schedule.cron, "every_seconds": schedule.every_seconds, "run_at": None, "timezone": schedule.timezone,
        "active": True, "max_retries": 0, "retry_delay_seconds": 1.0, "backoff": 1.0, "timeout_seconds": 30.0,
        "estimated_ms": 1000, "created_by": None, "created_at": T0 - HOUR, "schedule_from": T0 - HOUR,
        "secret_names": [],
    }  # fmt: skip
    return Task(**(spec | fields))


async def _watermark(db: asyncpg.Connection, task_id: int) -> datetime:
    until: datetime = await db.fetchval("SELECT materialized_until FROM tasks WHERE id = $1", task_id)
    return until


async def _times(db: asyncpg.Connection, task_id: int) -> list[datetime]:
    rows = await db.fetch("SELECT scheduled_time FROM task_schedule WHERE task_id = $1 ORDER BY 1", task_id)
    return [r[0] for r in rows]


def _seconds(first: datetime, end: datetime) -> list[datetime]:
    """Every whole second from `first` to before `end`."""
    return [first + timedelta(seconds=k) for k in range(int((end - first).total_seconds()))]


def test_a_task_reaches_the_horizon_unless_more_than_its_runs_ahead_fall_before_it() -> None:
    now, horizon = T0, T0 + 14 * HOUR  # 10:00, the end of the day
    minutely = _task(Schedule(kind=ScheduleKind.CRON, cron="* * * * *"))
    assert reach(minutely, now, horizon, 3600, 60) == (horizon, horizon)  # 840 runs to the horizon
    per_second_cron = _task(Schedule(kind=ScheduleKind.CRON, cron="* * * * * *"))
    for task in (_task(EVERY_SECOND), per_second_cron):
        assert reach(task, now, horizon, 3600, 60) == (now + HOUR / 2, now + HOUR)
    # A cron with a seconds field that fires once a minute is no more frequent than any minutely one.
    assert reach(_task(Schedule(kind=ScheduleKind.CRON, cron="30 * * * * *")), now, horizon, 3600, 60) == (
        horizon,
        horizon,
    )
    every_10_s = _task(Schedule(kind=ScheduleKind.INTERVAL, every_seconds=10))
    assert reach(every_10_s, now, horizon, 3600, 60) == (now + 5 * HOUR, now + 10 * HOUR)
    # Never less than two passes and the near term ahead, however few runs are asked for.
    assert reach(_task(EVERY_SECOND), now, horizon, 10, 60) == (now + 3 * MINUTE, now + 6 * MINUTE)


def test_first_runs_gives_at_most_its_limit_and_the_watermark_they_reach() -> None:
    every_second = partial(interval_times, 1, T0)
    assert first_runs(every_second, 1.0, T0, T0 + MINUTE, 3) == (
        _seconds(T0 + timedelta(seconds=1), T0 + 4 * S),
        T0 + 4 * S,
    )
    assert first_runs(every_second, 1.0, T0, T0 + 4 * S, 100) == (_seconds(T0 + S, T0 + 4 * S), T0 + 4 * S)
    # A catch-up of a day expands a window of runs at a time, not the day at once.
    seen: list[timedelta] = []

    def spied(start: datetime, end: datetime) -> list[datetime]:
        seen.append(end - start)
        return every_second(start, end)

    found, until = first_runs(spied, 1.0, T0, T0 + 24 * HOUR, 2500)
    assert (len(found), until, max(seen)) == (2500, T0 + 2501 * S, 2500 * S)
    # An interval of a year, with a large limit, does not step past the year 9999.
    yearly = partial(interval_times, 366 * 86400, T0)
    assert first_runs(yearly, 366 * 86400.0, T0, T0 + 24 * HOUR, 1_000_000) == ([], T0 + 24 * HOUR)


async def test_a_per_second_task_holds_an_hour_ahead_and_is_topped_up_once_half_of_it_is_left(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    task = await new_task(db, "every-second", schedule=EVERY_SECOND)
    minutely = await new_task(db, "minutely", schedule=Schedule(kind=ScheduleKind.CRON, cron="* * * * *"))
    await db.execute("UPDATE tasks SET schedule_from = $1", T0)
    assert await materialize(pool, settings, T0) == 3599 + 14 * 60  # an hour ahead; the minutely to midnight
    assert await _watermark(db, task.id) == T0 + HOUR
    assert await _watermark(db, minutely.id) == T0 + 14 * HOUR
    assert await materialize(pool, settings, T0 + 29 * MINUTE) == 0  # more than half an hour is left
    assert await lag_s(pool, near_term(T0 + 29 * MINUTE, settings.lookahead_hours)) == 0
    assert await materialize(pool, settings, T0 + 31 * MINUTE) == 31 * 60
    assert await _watermark(db, task.id) == T0 + 91 * MINUTE
    assert await _times(db, task.id) == _seconds(T0 + timedelta(seconds=1), T0 + 91 * MINUTE)


async def test_a_catch_up_across_midnight_commits_a_bounded_batch_of_runs_at_a_time(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Down from 23:00 to 00:30: every second of the outage becomes a row (the claim applies the misfire policy),
    in statements of at most `scheduler_batch_runs` runs, each committed: a failure part-way keeps what was done."""
    midnight = T0.replace(hour=0)
    task = await new_task(db, "every-second", schedule=EVERY_SECOND)
    await db.execute("UPDATE tasks SET schedule_from = $1, materialized_until = $1", midnight - HOUR)
    settings = settings.model_copy(update={"scheduler_batch_runs": 1000})
    sizes: list[int] = []

    async def failing_third(conn: asyncpg.Connection, task_ids: Sequence[int], times: Sequence[datetime]) -> int:
        sizes.append(len(times))
        if len(sizes) == 3:
            raise ConnectionResetError("the database went away")
        return await insert_runs(conn, task_ids, times)

    monkeypatch.setattr("scheduler.materialize.insert_runs", failing_third)
    now = midnight + 30 * MINUTE
    with pytest.raises(ConnectionResetError):
        await materialize(pool, settings, now)
    assert sizes == [1000, 1000, 1000]
    assert len(await _times(db, task.id)) == 2000  # the first two statements' runs stayed
    assert await _watermark(db, task.id) == midnight - HOUR + timedelta(seconds=2001)

    monkeypatch.setattr("scheduler.materialize.insert_runs", insert_runs)
    await materialize(pool, settings, now)
    assert await _times(db, task.id) == _seconds(midnight - HOUR + timedelta(seconds=1), now + HOUR)
    assert await _watermark(db, task.id) == now + HOUR


async def test_two_replicas_share_per_second_tasks_and_make_each_run_once(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """Each task's runs are every second up to its watermark, once, and at least half an hour of them (a task one
    replica cut short at its budget may be found by the other with more than half of its hour ahead)."""
    await db.execute(
        "INSERT INTO tasks (name, type, schedule_kind, every_seconds, schedule_from) "
        "SELECT 'task-' || i, 'noop', 'interval', 1, $1 FROM generate_series(1, 20) i",
        T0,
    )
    small = settings.model_copy(update={"scheduler_batch": 3, "scheduler_batch_runs": 1000})
    pools = [await create_pool(settings.database_url) for _ in range(2)]
    try:
        inserted = await asyncio.gather(*(materialize(p, small, T0) for p in pools))
        # At the same instant: a minute later, a task the other replica had found with just over half an hour ahead
        # is rightly topped up (it was, with 1,860 runs, in a loaded suite).
        again = await asyncio.gather(*(materialize(p, small, T0) for p in pools))
    finally:
        for p in pools:
            await p.close()
    assert all(n > 0 for n in inserted), inserted
    assert again == [0, 0]
    tasks = await db.fetch("SELECT id, materialized_until FROM tasks ORDER BY id")
    assert len(tasks) == 20
    for task_id, until in tasks:
        assert T0 + HOUR / 2 <= until <= T0 + HOUR
        assert await _times(db, task_id) == _seconds(T0 + timedelta(seconds=1), until)
    assert sum(inserted) == await db.fetchval("SELECT count(*) FROM task_schedule")


async def test_a_spread_frequent_task_has_each_occurrence_once_at_its_placed_time(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Every 10 s, spread over 5 s: ten hours ahead (3600 runs), topped up past half of it to the horizon."""
    every_10_s = Schedule(kind=ScheduleKind.INTERVAL, every_seconds=10)
    task = await new_task(db, "spread", schedule=every_10_s, window_seconds=5)
    await db.execute("UPDATE tasks SET schedule_from = $1", T0)
    await materialize(pool, settings, T0)
    assert await _watermark(db, task.id) == T0 + 10 * HOUR
    await materialize(pool, settings, T0 + 5 * HOUR + MINUTE)
    assert await _watermark(db, task.id) == T0 + 14 * HOUR  # midnight, the horizon
    nominal = [T0 + k * timedelta(seconds=10) for k in range(1, 14 * 360)]
    assert await _times(db, task.id) == [placed(task.id, t, 5) for t in nominal]


async def test_a_workflow_every_second_catches_up_in_transactions_that_commit(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = await create_workflow(
        db, WorkflowCreate(name="every-second", schedule=EVERY_SECOND, tasks=[{"name": "a", "type": "noop"}])
    )
    now = datetime.now(UTC)
    await db.execute("UPDATE workflows SET schedule_from = $1", now - 30 * MINUTE)
    calls = 0

    async def failing_700th(*args: Any, **kwargs: Any) -> int | None:
        nonlocal calls
        calls += 1
        if calls == 700:
            raise ConnectionResetError("the database went away")
        return await invoke(*args, **kwargs)

    monkeypatch.setattr("scheduler.workflows.invoke", failing_700th)
    with pytest.raises(ConnectionResetError):
        await materialize_workflows(pool, settings, now)
    assert await db.fetchval("SELECT count(*) FROM workflow_runs") == 500  # the first transaction's
    monkeypatch.setattr("scheduler.workflows.invoke", invoke)
    await materialize_workflows(pool, settings, now)
    firings = await db.fetch("SELECT scheduled_time FROM workflow_runs WHERE workflow_id = $1", stored.workflow.id)
    end = horizon(now, settings)
    # every second from the start of its schedule (not at it) to the horizon, once
    assert len(firings) == len({r[0] for r in firings}) == int((end - (now - 30 * MINUTE)).total_seconds()) - 1


def test_an_exception_without_a_message_is_logged_by_its_type() -> None:
    assert described(TimeoutError()) == "TimeoutError"
    assert described(ConnectionResetError("reset by peer")) == "ConnectionResetError: reset by peer"


async def test_the_scheduler_says_which_error_made_a_pass_fail(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def times_out(*_args: Any) -> int:
        raise TimeoutError

    monkeypatch.setattr(scheduler.service, "materialize", times_out)
    pool = await create_pool(settings.database_url)
    try:
        with caplog.at_level(logging.WARNING, logger="scheduler.service"):
            assert await scheduler.service._materialize_once(pool, settings) is False
    finally:
        await pool.close()
    assert "materialization failed, will retry: TimeoutError" in caplog.messages
