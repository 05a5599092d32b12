"""Concurrency caps: `max_concurrency` per task and a `concurrency_key` shared by tasks, enforced by the claim
without a coordinator, checked under a controlled clock and then across two real processors from the recorded
start and finish times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from taskmill.models import Schedule
from taskmill.states import ScheduleKind
from taskmill.store.runs import claim_due
from tests.faults.harness import Stack
from tests.helpers import new_task, wait_until

T0 = (datetime.now(UTC) + timedelta(days=40)).replace(hour=10, minute=0, second=0, microsecond=0)


async def _runs(db: asyncpg.Connection, task_id: int, n: int) -> list[int]:
    return [
        await db.fetchval(
            "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, $2) RETURNING id",
            task_id,
            T0 + i * timedelta(seconds=1),
        )
        for i in range(n)
    ]


async def _claim(pool: asyncpg.Pool, at: datetime) -> list[int]:
    return [o.run_id for o in await claim_due(pool, 100, 300, 0, at)]


async def test_a_task_has_at_most_its_cap_in_flight_and_the_rest_wait_their_turn(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    task = await new_task(db, "capped", max_concurrency=2)
    await db.execute("DELETE FROM task_schedule")  # its own run (immediate): this test makes its own
    runs = await _runs(db, task.id, 5)
    assert await _claim(pool, T0 + timedelta(seconds=10)) == runs[:2]
    assert await db.fetchval("SELECT held FROM concurrency_slots WHERE key = $1", f"task:{task.id}") == 2
    assert await _claim(pool, T0 + timedelta(seconds=12)) == []  # still two in flight
    await db.execute("UPDATE task_schedule SET status = 'running' WHERE id = $1", runs[0])
    await db.execute("UPDATE task_schedule SET status = 'succeeded' WHERE id = $1", runs[0])
    assert await db.fetchval("SELECT held FROM concurrency_slots WHERE key = $1", f"task:{task.id}") == 1
    assert await _claim(pool, T0 + timedelta(seconds=14)) == [runs[2]]  # the oldest waiting one
    await db.execute("UPDATE task_schedule SET status = 'cancelled' WHERE id = ANY($1::bigint[])", runs[1:3])
    assert await _claim(pool, T0 + timedelta(seconds=16)) == runs[3:5]
    assert await db.fetchval("SELECT held FROM concurrency_slots WHERE key = $1", f"task:{task.id}") == 2


async def test_tasks_sharing_a_key_share_its_count(db: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    first = await new_task(db, "uses-the-printer", max_concurrency=1, concurrency_key="printer")
    second = await new_task(db, "also-uses-the-printer", max_concurrency=1, concurrency_key="printer")
    await db.execute("DELETE FROM task_schedule")
    [a] = await _runs(db, first.id, 1)
    [b] = await _runs(db, second.id, 1)
    assert await _claim(pool, T0 + timedelta(seconds=5)) == [a]
    await db.execute("UPDATE task_schedule SET status = 'running' WHERE id = $1", a)
    await db.execute("UPDATE task_schedule SET status = 'failed' WHERE id = $1", a)
    assert await _claim(pool, T0 + timedelta(seconds=7)) == [b]


async def test_max_concurrency_holds_across_two_processors(stack: Stack, db: asyncpg.Connection) -> None:
    """Ten one-second runs due at once, two processors of four slots each: never more than two at a time, by the
    recorded start and finish of every run, and all ten succeed."""
    await stack.start(distributor=1)
    for _ in range(2):
        await stack.add("processor", "--concurrency", "4")
    # A recurring task no scheduler expands here: its runs are the ten below.
    hourly = Schedule(kind=ScheduleKind.INTERVAL, every_seconds=3600)
    task = await new_task(db, "two-at-a-time", "sleep", {"ms": 1000}, schedule=hourly, max_concurrency=2)
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) SELECT $1, now() + k * interval '1 millisecond' "
        "FROM generate_series(1, 10) k",
        task.id,
    )

    async def all_done() -> bool:
        n: int = await db.fetchval(
            "SELECT count(*) FROM task_schedule WHERE task_id = $1 AND status = 'succeeded'", task.id
        )
        return n == 10

    await wait_until(all_done, timeout=60, interval=0.2, what="the ten runs to succeed")
    rows = await db.fetch("SELECT started_at, finished_at FROM task_schedule WHERE task_id = $1", task.id)
    events = sorted([(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows])
    at_once = peak = 0
    for _, step in events:
        at_once += step
        peak = max(peak, at_once)
    assert peak == 2
    assert await db.fetchval("SELECT held FROM concurrency_slots WHERE key = $1", f"task:{task.id}") == 0
