"""Overlaps: an occurrence falling due while its task's previous run is still in flight, for each policy, decided
by the claim under a controlled clock (the claim's `at`); and a real processor stopping the run it was executing
when the next occurrence cancels it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from taskmill.models import Schedule
from taskmill.states import ScheduleKind
from taskmill.store.runs import claim_due
from tests.faults.harness import Stack
from tests.helpers import new_task, wait_until

T0 = (datetime.now(UTC) + timedelta(days=40)).replace(hour=10, minute=0, second=0, microsecond=0)
MINUTE = timedelta(minutes=1)


async def _minutely(db: asyncpg.Connection, overlap: str) -> tuple[int, list[int]]:
    """A task with an occurrence at T0, T0+1 min and T0+2 min; returns its id and the three runs' ids."""
    task = await new_task(db, f"every-minute-{overlap}", schedule=Schedule(kind=ScheduleKind.CRON, cron="* * * * *"),
                          overlap=overlap)  # fmt: skip
    ids = [
        await db.fetchval(
            "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, $2) RETURNING id", task.id, at
        )
        for at in (T0, T0 + MINUTE, T0 + 2 * MINUTE)
    ]
    return task.id, ids


async def _claim(pool: asyncpg.Pool, at: datetime) -> list[int]:
    return [o.run_id for o in await claim_due(pool, 100, 300, 0, at)]


async def _set(db: asyncpg.Connection, run_id: int, status: str) -> None:
    await db.execute(f"UPDATE task_schedule SET status = '{status}' WHERE id = $1", run_id)


async def _states(db: asyncpg.Connection, ids: list[int]) -> list[tuple[str, str | None]]:
    rows = await db.fetch("SELECT id, status::text, error FROM task_schedule WHERE id = ANY($1::bigint[])", ids)
    by_id = {r["id"]: (r["status"], r["error"]) for r in rows}
    return [by_id[i] for i in ids]


async def test_allow_runs_the_next_occurrence_beside_the_previous(db: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    _, (first, second, _) = await _minutely(db, "allow")
    assert await _claim(pool, T0) == [first]
    await _set(db, first, "running")
    assert await _claim(pool, T0 + MINUTE) == [second]


async def test_skip_records_the_occurrence_skipped_while_the_previous_runs(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    _, (first, second, third) = await _minutely(db, "skip")
    assert await _claim(pool, T0) == [first]
    await _set(db, first, "running")
    assert await _claim(pool, T0 + MINUTE) == []
    assert (await _states(db, [second]))[0] == (
        "skipped",
        f"overlap skip: run {first} of this task was still in flight",
    )
    await _set(db, first, "succeeded")
    assert await _claim(pool, T0 + 2 * MINUTE) == [third]  # the previous run ended: on time again


async def test_queue_one_holds_the_latest_occurrence_until_the_previous_ends_and_skips_older_ones(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    _, (first, second, third) = await _minutely(db, "queue_one")
    assert await _claim(pool, T0) == [first]
    await _set(db, first, "running")
    assert await _claim(pool, T0 + MINUTE) == []
    assert (await _states(db, [second]))[0] == ("scheduled", None)  # held
    assert await _claim(pool, T0 + 2 * MINUTE) == []  # a later one is due: the held one gives way
    assert await _states(db, [second, third]) == [
        ("skipped", f"overlap queue_one: run {first} of this task was still in flight"),
        ("scheduled", None),
    ]
    await _set(db, first, "succeeded")
    assert await _claim(pool, T0 + 2 * MINUTE + timedelta(seconds=5)) == [third]


async def test_cancel_previous_cancels_the_run_in_flight_and_runs_the_new_occurrence(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    _, (first, second, _) = await _minutely(db, "cancel_previous")
    assert await _claim(pool, T0) == [first]
    await _set(db, first, "running")
    assert await _claim(pool, T0 + MINUTE) == [second]
    assert (await _states(db, [first]))[0] == (
        "cancelled",
        f"cancelled: the next occurrence (run {second}) fell due (overlap cancel_previous)",
    )


async def test_a_processor_stops_the_run_it_executes_when_the_next_occurrence_cancels_it(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """One processor that runs one run at a time: every 3 s a run that would sleep a minute. Each next occurrence
    cancels the one in flight, and the processor stops it at once, so the next one can start."""
    await stack.start(distributor=1)
    await stack.add("processor", "--concurrency", "1")
    task = await new_task(db, "sleeper", "sleep", {"ms": 60_000}, timeout_seconds=30, overlap="cancel_previous",
                          schedule=Schedule(kind=ScheduleKind.INTERVAL, every_seconds=3))  # fmt: skip
    start = await db.fetchval("SELECT now()")
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) SELECT $1, $2::timestamptz + k * interval '3 seconds' "
        "FROM generate_series(0, 3) k",
        task.id,
        start,
    )

    async def three_started() -> bool:
        n: int = await db.fetchval("SELECT count(*) FROM task_schedule WHERE task_id = $1 AND started_at IS NOT NULL",
                                   task.id)  # fmt: skip
        return n >= 3

    await wait_until(three_started, timeout=30, interval=0.2, what="three runs to start one after the other")
    rows = await db.fetch(
        "SELECT status::text, started_at, finished_at, error FROM task_schedule WHERE task_id = $1 "
        "AND started_at IS NOT NULL ORDER BY scheduled_time",
        task.id,
    )
    assert [r["status"] for r in rows[:2]] == ["cancelled", "cancelled"]
    # With one slot, the next could only start once the cancelled one was stopped (its sleep was a minute).
    assert rows[1]["started_at"] - rows[0]["started_at"] < timedelta(seconds=10)
    processor = stack.live("processor")[0]
    assert "was cancelled while running: stopped" in processor.output()
    await processor.kill()  # not stopped gently: it would drain the minute-long run in flight for nothing


async def test_occurrences_due_in_the_same_claim_count_as_overlapping_each_other(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Three occurrences of each task, all due (within their grace) when one claim comes, nothing in flight: only one
    is handed out per task, as the policy says; with `allow` all three."""
    at = T0 + 2 * MINUTE + timedelta(seconds=5)
    runs: dict[str, list[int]] = {}
    for overlap in ("allow", "skip", "queue_one", "cancel_previous"):
        task = await new_task(db, f"late-{overlap}", schedule=Schedule(kind=ScheduleKind.CRON, cron="* * * * *"),
                              overlap=overlap, misfire_grace_seconds=3600)  # fmt: skip
        runs[overlap] = [
            await db.fetchval(
                "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, $2) RETURNING id", task.id, t
            )
            for t in (T0, T0 + MINUTE, T0 + 2 * MINUTE)
        ]
    claimed = set(await _claim(pool, at))
    assert claimed == {*runs["allow"], runs["skip"][0], runs["queue_one"][0], runs["cancel_previous"][2]}
    skip = runs["skip"]
    assert await _states(db, skip[1:]) == [
        ("skipped", f"overlap skip: run {skip[0]} of this task was still in flight"),
        ("skipped", f"overlap skip: run {skip[1]} of this task was still in flight"),
    ]
    queue_one = runs["queue_one"]
    assert await _states(db, queue_one[1:]) == [
        ("skipped", f"overlap queue_one: run {queue_one[0]} of this task was still in flight"),
        ("scheduled", None),  # the latest, held until the first ends
    ]
    cancel = runs["cancel_previous"]
    assert await _states(db, cancel[:2]) == [
        ("skipped", f"overlap cancel_previous: superseded by run {cancel[1]} of this task, due in the same claim"),
        ("skipped", f"overlap cancel_previous: superseded by run {cancel[2]} of this task, due in the same claim"),
    ]
    assert await _claim(pool, at + timedelta(seconds=2)) == []  # queue_one's latest still waits for the first
    await _set(db, queue_one[0], "running")
    await _set(db, queue_one[0], "succeeded")
    assert await _claim(pool, at + timedelta(seconds=4)) == [queue_one[2]]
