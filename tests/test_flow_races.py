"""What follows outcomes (run_flow, migration 0013), under concurrency: outcomes recorded at once in separate
transactions, as processors record them, never lose a release, never release twice and never leave a parent
waiting. Straight on the store functions, many rounds, so the interleavings vary."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import asyncpg

from taskmill.spawn import Parent, SpawnSpec, spawn
from taskmill.states import RunState
from taskmill.store.runs import Outcome, StartRequest, finish_runs, start_runs
from tests.helpers import new_task


async def _start(pool: asyncpg.Pool, run: asyncpg.Record) -> None:
    async with pool.acquire() as conn:
        await start_runs(conn, "w", [StartRequest(run["id"], run["attempt"] + 1, 60, run["scheduled_time"])])


async def _finish(pool: asyncpg.Pool, run: asyncpg.Record, status: RunState, error: str | None = None) -> None:
    outcome = Outcome(run["id"], run["attempt"], status, None, error, datetime.now(UTC), 1.0, run["scheduled_time"])
    async with pool.acquire() as conn:
        assert await finish_runs(conn, [outcome]) == [True]


async def _row(pool: asyncpg.Pool, run_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM task_schedule WHERE id = $1", run_id)
    assert row is not None
    return row


async def _running_parent(db: asyncpg.Connection, pool: asyncpg.Pool, name: str) -> tuple[asyncpg.Record, Parent]:
    """A one-off task's run, started: a parent to spawn from."""
    task = await new_task(db, name, "noop")
    parent = await _row(pool, await db.fetchval("SELECT id FROM task_schedule WHERE task_id = $1", task.id))
    await _start(pool, parent)
    parent = await _row(pool, parent["id"])
    return parent, Parent(parent["id"], task.id, parent["scheduled_time"], 10, 1000)


async def test_a_parent_settles_once_whatever_the_order_of_its_children_and_its_own_wait(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    rng = random.Random(7)
    for round_ in range(12):
        parent, ref = await _running_parent(db, pool, f"parent-{round_}")
        async with pool.acquire() as conn, conn.transaction():
            children = await spawn(conn, ref, [SpawnSpec(type="noop") for _ in range(8)])
        rows = [await _row(pool, c.run_id) for c in children]
        await asyncio.gather(*(_start(pool, r) for r in rows))
        rows = [await _row(pool, r["id"]) for r in rows]
        fail = rng.random() < 0.3
        finishes = [
            _finish(pool, r, RunState.FAILED if fail and i == 3 else RunState.SUCCEEDED, "boom" if fail else None)
            for i, r in enumerate(rows)
        ]
        # The parent's own end (waiting for its children) lands among its children's.
        finishes.insert(rng.randrange(len(finishes) + 1), _finish(pool, parent, RunState.WAITING))
        await asyncio.gather(*finishes)
        settled = await _row(pool, parent["id"])
        if fail:
            assert settled["status"] == "failed", round_
            assert settled["error"].startswith(f"child run {rows[3]['id']} failed: boom")
        else:
            assert settled["status"] == "succeeded", round_
        result = await db.fetchval("SELECT status::text FROM task_results WHERE run_id = $1", parent["id"])
        assert result == settled["status"]
        audit = await db.fetch("SELECT to_status::text FROM run_audit WHERE run_id = $1 ORDER BY at", parent["id"])
        assert [a["to_status"] for a in audit][-2:] == ["waiting", settled["status"]]  # settled exactly once


async def test_a_reduce_is_released_once_when_its_inputs_end_at_the_same_time(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    for round_ in range(8):
        _, ref = await _running_parent(db, pool, f"mapper-{round_}")
        async with pool.acquire() as conn, conn.transaction():
            maps = await spawn(conn, ref, [SpawnSpec(type="noop") for _ in range(10)])
            (reduce,) = await spawn(
                conn, ref, [SpawnSpec(type="noop", key="sum", depends_on=[m.run_id for m in maps])], first_number=11
            )
        assert (await _row(pool, reduce.run_id))["status"] == "blocked"
        rows = [await _row(pool, m.run_id) for m in maps]
        await asyncio.gather(*(_start(pool, r) for r in rows))
        rows = [await _row(pool, r["id"]) for r in rows]
        await asyncio.gather(*(_finish(pool, r, RunState.SUCCEEDED) for r in rows))
        released = await _row(pool, reduce.run_id)
        assert (released["status"], released["blockers"]) == ("scheduled", 0), round_
        moves = await db.fetch("SELECT to_status::text FROM run_audit WHERE run_id = $1 ORDER BY at", reduce.run_id)
        assert [m["to_status"] for m in moves] == ["blocked", "scheduled"]


async def test_a_reduce_spawned_after_an_input_failed_is_skipped_and_counted_as_ended(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    parent, ref = await _running_parent(db, pool, "late-reduce")
    async with pool.acquire() as conn, conn.transaction():
        (first, second) = await spawn(conn, ref, [SpawnSpec(type="noop"), SpawnSpec(type="noop")])
    for child, status in ((first, RunState.SUCCEEDED), (second, RunState.FAILED)):
        row = await _row(pool, child.run_id)
        await _start(pool, row)
        await _finish(pool, await _row(pool, child.run_id), status, "no" if status is RunState.FAILED else None)
    async with pool.acquire() as conn, conn.transaction():
        (reduce,) = await spawn(
            conn, ref, [SpawnSpec(type="noop", depends_on=[first.run_id, second.run_id])], first_number=3
        )
    skipped = await _row(pool, reduce.run_id)
    assert (skipped["status"], skipped["error"]) == ("skipped", f"dependency run {second.run_id} failed")
    counted = await db.fetchrow("SELECT spawned, open FROM run_children WHERE parent_id = $1", parent["id"])
    assert counted is not None and (counted["spawned"], counted["open"]) == (3, 0)
