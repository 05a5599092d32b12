"""What follows outcomes (run_flow, migration 0013), under concurrency: outcomes recorded at once in separate
transactions, as processors record them, never lose a release, never release twice and never leave a parent
waiting. Straight on the store functions, many rounds, so the interleavings vary."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import asyncpg
import pytest

from taskmill.settings import Settings
from taskmill.spawn import Parent, SpawnError, SpawnSpec, spawn
from taskmill.states import RunState
from taskmill.store.runs import Outcome, StartRequest, cancel_run, finish_runs, start_runs
from tests.helpers import new_task, wait_until


async def _start(pool: asyncpg.Pool, run: asyncpg.Record) -> None:
    async with pool.acquire() as conn:
        await start_runs(conn, "w", [StartRequest(run["id"], run["attempt"] + 1, 60, run["scheduled_time"])])


def _outcome(run: asyncpg.Record, status: RunState, error: str | None = None) -> Outcome:
    return Outcome(run["id"], run["attempt"], status, None, error, datetime.now(UTC), 1.0, run["scheduled_time"])


async def _finish(pool: asyncpg.Pool, run: asyncpg.Record, status: RunState, error: str | None = None) -> None:
    async with pool.acquire() as conn:
        assert await finish_runs(conn, [_outcome(run, status, error)]) == [True]


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


async def _until_blocked_on_a_lock(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Until `conn`'s statement waits for a lock another transaction holds."""
    pid = conn.get_server_pid()

    async def blocked() -> bool:
        return bool(await pool.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid))

    await wait_until(blocked, timeout=10, what="a lock wait")


async def test_a_child_that_ends_while_its_parent_starts_waiting_settles_the_parent(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: Settings
) -> None:
    """The interleaving that left a parent waiting for ever: the parent's move to `waiting` holds its children's
    count while the last child's end has already begun (its statement's snapshot taken, waiting for that lock).
    Forced, not hoped for: the child's outcome is seen blocked on the lock before the parent's commits."""
    for round_ in range(5):
        parent, ref = await _running_parent(db, pool, f"held-{round_}")
        async with pool.acquire() as conn, conn.transaction():
            (child,) = await spawn(conn, ref, [SpawnSpec(type="noop")])
        await _start(pool, await _row(pool, child.run_id))
        child_row = await _row(pool, child.run_id)
        parent_side = await asyncpg.connect(settings.database_url)
        child_side = await asyncpg.connect(settings.database_url)
        try:
            async with parent_side.transaction():
                assert await finish_runs(parent_side, [_outcome(parent, RunState.WAITING)]) == [True]
                ending = asyncio.create_task(finish_runs(child_side, [_outcome(child_row, RunState.SUCCEEDED)]))
                await _until_blocked_on_a_lock(pool, child_side)
            assert await ending == [True]
        finally:
            await parent_side.close()
            await child_side.close()
        settled = await _row(pool, parent["id"])
        assert settled["status"] == "succeeded", round_
        moves = await db.fetch("SELECT to_status::text FROM run_audit WHERE run_id = $1 ORDER BY at", parent["id"])
        assert [m["to_status"] for m in moves][-2:] == ["waiting", "succeeded"]


async def _spawned(pool: asyncpg.Pool, parent: Parent, n: int, first: int = 1) -> list[int]:
    async with pool.acquire() as conn, conn.transaction():
        children = await spawn(conn, parent, [SpawnSpec(type="noop") for _ in range(n)], first_number=first)
    return [c.run_id for c in children]


async def _statuses(pool: asyncpg.Pool, run_ids: list[int]) -> list[str]:
    rows = await pool.fetch("SELECT id, status::text FROM task_schedule WHERE id = ANY($1::bigint[])", run_ids)
    by_id = {r["id"]: r["status"] for r in rows}
    return [by_id[i] for i in run_ids]


async def test_cancelling_a_waiting_parent_cancels_every_descendant_that_has_not_ended(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    parent, ref = await _running_parent(db, pool, "tree")
    done, running, queued, nested = await _spawned(pool, ref, 4)
    async with pool.acquire() as conn, conn.transaction():
        (blocked,) = await spawn(conn, ref, [SpawnSpec(type="noop", key="sum", depends_on=[running])], first_number=5)
    reduce = blocked.run_id
    for run_id in (done, running, nested):
        await _start(pool, await _row(pool, run_id))
    await _finish(pool, await _row(pool, done), RunState.SUCCEEDED)
    # `nested` spawns a grandchild, then waits for it.
    nested_row = await _row(pool, nested)
    (grandchild,) = await _spawned(pool, Parent(nested, nested_row["task_id"], nested_row["scheduled_time"], 10, 10), 1)
    await _finish(pool, nested_row, RunState.WAITING)
    await db.execute("UPDATE task_schedule SET status = 'queued' WHERE id = $1", queued)
    await _finish(pool, parent, RunState.WAITING)
    assert (await _row(pool, parent["id"]))["status"] == "waiting"

    async with pool.acquire() as conn:
        assert await cancel_run(conn, parent["id"])
    ids = [parent["id"], done, running, queued, nested, reduce, grandchild]
    assert await _statuses(pool, ids) == [
        "cancelled", "succeeded", "cancelled", "cancelled", "cancelled", "cancelled", "cancelled"
    ]  # fmt: skip
    reasons = await db.fetch("SELECT id, error FROM task_schedule WHERE id = ANY($1::bigint[])", [running, grandchild])
    assert {r["id"]: r["error"] for r in reasons} == {
        running: f"cancelled: its parent run {parent['id']} was cancelled",
        grandchild: f"cancelled: its parent run {nested} was cancelled",
    }
    # Nothing left to end: each descendant moved once, to cancelled.
    moves = await db.fetch(
        "SELECT run_id, count(*) FILTER (WHERE to_status = 'cancelled') AS n FROM run_audit "
        "WHERE run_id = ANY($1::bigint[]) GROUP BY run_id",
        ids,
    )
    assert {r["run_id"]: r["n"] for r in moves} == {i: (0 if i == done else 1) for i in ids}


async def test_a_spawn_racing_its_parents_cancel_is_either_refused_or_cancelled_with_it(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: Settings
) -> None:
    """Both orders, forced: the spawn's count taken first (the cancel waits for it, then cancels the new child), and
    the cancel first (the spawn waits for it, then is refused)."""
    for spawn_first in (True, False):
        parent, ref = await _running_parent(db, pool, f"racing-{spawn_first}")
        await _spawned(pool, ref, 1)  # the count's row exists: both sides meet on it
        spawner = await asyncpg.connect(settings.database_url)
        canceller = await asyncpg.connect(settings.database_url)
        try:
            if spawn_first:
                async with spawner.transaction():
                    (child,) = await spawn(spawner, ref, [SpawnSpec(type="noop")], first_number=2)
                    cancelling = asyncio.create_task(cancel_run(canceller, parent["id"]))
                    await _until_blocked_on_a_lock(pool, canceller)
                assert await cancelling
                assert await _statuses(pool, [child.run_id]) == ["cancelled"]
            else:
                async with canceller.transaction():
                    assert await cancel_run(canceller, parent["id"])
                    spawning = asyncio.create_task(_spawn_in(spawner, ref))
                    await _until_blocked_on_a_lock(pool, spawner)
                with pytest.raises(SpawnError, match=f"run {parent['id']} was cancelled"):
                    await spawning
        finally:
            await spawner.close()
            await canceller.close()
        left = await db.fetchval(
            "SELECT count(*) FROM task_schedule WHERE parent_id = $1 AND status NOT IN ('cancelled')", parent["id"]
        )
        assert left == 0, spawn_first


async def _spawn_in(conn: asyncpg.Connection, parent: Parent) -> None:
    async with conn.transaction():
        await spawn(conn, parent, [SpawnSpec(type="noop")], first_number=2)
