from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

import scheduler.service
from scheduler.materialize import materialize, window
from taskmill.db import create_pool
from taskmill.models import Schedule, TaskCreate
from taskmill.settings import Settings
from taskmill.states import ScheduleKind
from taskmill.store.tasks import set_active, update_task
from tests.helpers import new_task, running, wait_until

NOON = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
DAY_START = datetime(2026, 6, 10, tzinfo=UTC)


def cron(expr: str, tz: str = "UTC") -> Schedule:
    return Schedule(kind=ScheduleKind.CRON, cron=expr, timezone=tz)


async def backdate(db: asyncpg.Connection, when: datetime = DAY_START) -> None:
    await db.execute("UPDATE tasks SET schedule_from = $1", when)


async def run_counts(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT t.name, count(s.id) FROM tasks t LEFT JOIN task_schedule s ON s.task_id = t.id GROUP BY t.name"
    )
    return {r[0]: r[1] for r in rows}


def test_the_window_covers_the_utc_day_and_three_hours_past_midnight() -> None:
    assert window(NOON, 3) == (DAY_START, DAY_START + timedelta(days=1))
    start, horizon = window(datetime(2026, 6, 10, 22, 30, tzinfo=UTC), 3)
    assert start == DAY_START
    assert horizon >= datetime(2026, 6, 11, 1, 30, tzinfo=UTC)


async def test_materializes_the_rest_of_the_day_for_each_schedule(settings: Settings, db: asyncpg.Connection) -> None:
    await new_task(db, "minutely", schedule=cron("* * * * *"))
    await new_task(db, "hourly-kolkata", schedule=cron("30 * * * *", "Asia/Kolkata"))  # :30 IST is :00 UTC
    await new_task(db, "daily-9-ny", schedule=cron("0 9 * * *", "America/New_York"))  # 13:00 UTC in June
    await new_task(db, "every-20-min", schedule=Schedule(kind=ScheduleKind.INTERVAL, every_seconds=1200))
    await backdate(db)
    pool = await create_pool(settings.database_url)
    try:
        inserted = await materialize(pool, settings, NOON)
        again = await materialize(pool, settings, NOON)
    finally:
        await pool.close()
    counts = await run_counts(db)
    # The interval's first run is one interval after its anchor (00:00), so 00:20 .. 23:40.
    assert counts == {"minutely": 1440, "hourly-kolkata": 24, "daily-9-ny": 1, "every-20-min": 71}
    assert inserted == sum(counts.values())
    assert again == 0


async def test_a_new_task_gets_no_runs_before_it_was_created(settings: Settings, db: asyncpg.Connection) -> None:
    await new_task(db, "hourly", schedule=cron("0 * * * *"))
    await backdate(db, NOON + timedelta(minutes=1))
    pool = await create_pool(settings.database_url)
    try:
        await materialize(pool, settings, NOON + timedelta(minutes=2))
    finally:
        await pool.close()
    first = await db.fetchval("SELECT min(scheduled_time) FROM task_schedule")
    assert first == NOON + timedelta(hours=1)
    assert await db.fetchval("SELECT count(*) FROM task_schedule") == 11  # 13:00 .. 23:00


async def test_two_scheduler_replicas_at_once_produce_each_run_once(settings: Settings, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO tasks (name, type, schedule_kind, cron, schedule_from) "
        "SELECT 'task-' || i, 'noop', 'cron', '*/5 * * * *', $1 FROM generate_series(1, 300) i",
        DAY_START,
    )
    small_batches = settings.model_copy(update={"scheduler_batch": 7})
    pools = [await create_pool(settings.database_url) for _ in range(2)]
    try:
        inserted = await asyncio.gather(*(materialize(p, small_batches, NOON) for p in pools))
    finally:
        for p in pools:
            await p.close()
    assert sum(inserted) == 300 * 288
    assert all(n > 0 for n in inserted), "both replicas should have taken a share"
    assert await db.fetchval("SELECT count(*) FROM task_schedule") == 300 * 288
    assert (
        await db.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM task_schedule GROUP BY task_id, scheduled_time HAVING count(*) > 1) d"
        )
        == 0
    )


async def test_segments_split_the_tasks_between_replicas(settings: Settings, db: asyncpg.Connection) -> None:
    for i in range(6):
        await new_task(db, f"t{i}", schedule=cron("0 * * * *"))
    await backdate(db)
    pool = await create_pool(settings.database_url)
    try:
        await materialize(pool, settings.model_copy(update={"scheduler_segments": 2, "scheduler_segment": 1}), NOON)
    finally:
        await pool.close()
    ids = {r[0] for r in await db.fetch("SELECT DISTINCT task_id FROM task_schedule")}
    assert ids and all(i % 2 == 1 for i in ids)
    assert len(ids) == 3


async def test_an_edit_replaces_future_runs_within_seconds_and_keeps_history(
    settings: Settings, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "edited", schedule=cron("*/5 * * * * *"))
    past = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time, status) VALUES ($1, now() - interval '1 hour', "
        "'scheduled') RETURNING id",
        task.id,
    )
    await db.execute("UPDATE task_schedule SET status = 'skipped' WHERE id = $1", past)

    async with running(scheduler.service.run, settings.model_copy(update={"scheduler_interval_s": 60})):

        async def future_runs() -> list[datetime]:
            rows = await db.fetch(
                "SELECT scheduled_time FROM task_schedule WHERE task_id = $1 AND scheduled_time > now() "
                "ORDER BY 1 LIMIT 50",
                task.id,
            )
            return [r[0] for r in rows]

        async def every_5_s() -> bool:
            return len(await future_runs()) == 50

        await wait_until(every_5_s, 10, what="runs every 5 seconds")
        assert await update_task(db, task.id, TaskCreate(name="edited", type="noop", schedule=cron("*/7 * * * * *")))

        async def every_7_s() -> bool:
            runs = await future_runs()
            return len(runs) == 50 and all(r.second % 7 == 0 for r in runs)

        await wait_until(every_7_s, 10, what="the edited schedule")
    assert await db.fetchval("SELECT status::text FROM task_schedule WHERE id = $1", past) == "skipped"


async def test_a_deactivated_task_gets_no_more_runs(settings: Settings, db: asyncpg.Connection) -> None:
    task = await new_task(db, "paused", schedule=cron("* * * * *"))
    async with running(scheduler.service.run, settings):

        async def some_runs() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM task_schedule WHERE task_id = $1", task.id))

        await wait_until(some_runs, 10, what="materialized runs")
        assert await set_active(db, task.id, False)
        await asyncio.sleep(1.5)  # more than one scheduler interval: it must not add them back
        assert (
            await db.fetchval(
                "SELECT count(*) FROM task_schedule WHERE task_id = $1 AND status = 'scheduled' "
                "AND scheduled_time > now()",
                task.id,
            )
            == 0
        )
