"""The janitor, against back-dated rows: what is older than the retention goes, in batches; nothing else does."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from pydantic import ValidationError

import scheduler.service
from scheduler.janitor import purge
from taskmill.client import defer
from taskmill.db import create_pool
from taskmill.settings import Settings, format_settings_error
from taskmill.spawn import Parent, SpawnSpec, spawn
from taskmill.store.retention import purge_runs
from taskmill.store.runs import StartRequest, start_runs
from taskmill.submit import submit
from tests.helpers import new_task, running, wait_until

TERMINAL = ("succeeded", "failed", "dead", "cancelled", "skipped")
IN_FLIGHT = ("scheduled", "queued", "running", "retrying")


async def add_runs(db: asyncpg.Connection, task_id: int, status: str, age_days: float, count: int = 1) -> list[int]:
    """`count` runs in `status`, scheduled and (when terminal) finished `age_days` ago, each with one result and
    its audit rows (the insert's, plus one more) back-dated to the same age."""
    ids: list[int] = [
        r["id"]
        for r in await db.fetch(
            """INSERT INTO task_schedule (task_id, scheduled_time, status, attempt, started_at, finished_at)
               SELECT $1, now() - make_interval(days => $3) - g * interval '1 ms', $2::run_status, 1,
                      now() - make_interval(days => $3),
                      CASE WHEN $2::text = ANY($5::text[]) THEN now() - make_interval(days => $3) END
               FROM generate_series(1, $4) g
               RETURNING id""",
            task_id,
            status,
            age_days,
            count,
            list(TERMINAL),
        )
    ]
    await db.execute(
        """INSERT INTO task_results (run_id, attempt, status, finished_at, duration_ms, result, scheduled_time)
           SELECT s.id, 1, 'failed', now() - make_interval(days => $2), 5, '{"kept": true}', s.scheduled_time
           FROM task_schedule s WHERE s.id = ANY($1::bigint[])""",
        ids,
        age_days,
    )
    await db.execute(
        """INSERT INTO run_audit (run_id, task_id, from_status, to_status, attempt)
           SELECT id, $2, 'queued', 'running', 1 FROM unnest($1::bigint[]) id""",
        ids,
        task_id,
    )
    await db.execute(
        "UPDATE run_audit SET at = now() - make_interval(days => $2) WHERE run_id = ANY($1::bigint[])", ids, age_days
    )
    return ids


async def counts(db: asyncpg.Connection, ids: list[int]) -> tuple[int, int, int]:
    """Runs, results and audit rows left of the runs `ids`."""
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM task_schedule WHERE id = ANY($1::bigint[])),
                  (SELECT count(*) FROM task_results WHERE run_id = ANY($1::bigint[])),
                  (SELECT count(*) FROM run_audit WHERE run_id = ANY($1::bigint[]))""",
        ids,
    )
    assert row is not None
    return row[0], row[1], row[2]


async def test_old_terminal_runs_go_with_their_results_and_audit_and_nothing_recent_or_unfinished_does(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    task = await new_task(db, "history", "noop")
    created = await db.fetchval("SELECT id FROM task_schedule WHERE task_id = $1", task.id)  # the immediate run
    old_terminal = {s: await add_runs(db, task.id, s, 91) for s in TERMINAL}
    recent_terminal = {s: await add_runs(db, task.id, s, 89) for s in TERMINAL}
    old_in_flight = {s: await add_runs(db, task.id, s, 400) for s in IN_FLIGHT}

    done = await purge(pool, 90, 1000)

    for status, ids in old_terminal.items():
        assert await counts(db, ids) == (0, 0, 0), status
    for status, ids in recent_terminal.items():
        assert await counts(db, ids) == (1, 1, 2), status
    for status, ids in old_in_flight.items():
        # The run stays whatever its age; its own rows past the retention (an attempt's result, the audit of its
        # status changes back then) age out like any other.
        assert await counts(db, ids) == (1, 0, 0), status
    assert await counts(db, [created]) == (1, 0, 1)
    assert (done.runs, done.results, done.audit) == (5, 4, 5 * 2 + 4 * 2)
    assert await purge(pool, 90, 1000) == type(done)(batches=5)  # nothing left: one short batch per kind


async def test_a_purge_larger_than_one_batch_takes_several_statements_of_at_most_a_batch_each(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    task = await new_task(db, "busy", "noop")
    ids = await add_runs(db, task.id, "succeeded", 120, count=25)

    async with pool.acquire() as conn:
        first = await purge_runs(conn, 90, 10)
    assert (first.runs, first.audit) == (10, 20)
    assert (await counts(db, ids))[0] == 15

    done = await purge(pool, 90, 10)
    assert (done.runs, done.audit) == (15, 30)
    assert done.batches == 2 + 1 + 1 + 1 + 1  # runs: 10, then 5 (short: done); then one short batch of each other kind
    assert await counts(db, ids) == (0, 0, 0)


async def test_two_janitors_at_once_delete_each_row_once_and_neither_fails(
    settings: Settings, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "crowded", "noop")
    ids = await add_runs(db, task.id, "succeeded", 200, count=20_000)
    await db.execute("ANALYZE")
    pools = [await create_pool(settings.database_url, max_size=1) for _ in range(2)]
    try:
        one, two = await asyncio.gather(*(purge(p, 90, 500) for p in pools))
    finally:
        await asyncio.gather(*(p.close() for p in pools))
    assert one.runs + two.runs == 20_000
    assert one.audit + two.audit == 40_000
    assert one.runs > 0 and two.runs > 0, (one, two)  # both took a share
    assert await counts(db, ids) == (0, 0, 0)


async def test_the_scheduler_role_runs_the_janitor_beside_materialization(
    settings: Settings, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "ancient", "noop")
    old = await add_runs(db, task.id, "succeeded", 95, count=3)
    kept = await add_runs(db, task.id, "succeeded", 5)
    short = settings.model_copy(update={"retention_days": 30, "retention_interval_s": 0.2})

    async def purged() -> bool:
        return await counts(db, old) == (0, 0, 0)

    async with running(scheduler.service.run, short):
        await wait_until(purged, timeout=10, what="the janitor to purge the old runs")
        # A run that ages past the retention while the role runs goes on a later pass.
        await db.execute(
            "UPDATE task_schedule SET finished_at = finished_at - interval '30 days' WHERE id = ANY($1::bigint[])", kept
        )
        await wait_until(lambda: _gone(db, kept), timeout=10, what="the next pass to purge the newly old run")


async def _gone(db: asyncpg.Connection, ids: list[int]) -> bool:
    return (await counts(db, ids))[0] == 0


def test_the_retention_is_read_from_the_environment_and_a_bad_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMILL_RETENTION_DAYS", "30")
    assert Settings().retention_days == 30
    assert Settings.model_fields["retention_days"].default == 90
    monkeypatch.setenv("TASKMILL_RETENTION_DAYS", "0")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert format_settings_error(caught.value).startswith("bad setting: TASKMILL_RETENTION_DAYS: ")


async def test_workflow_edges_children_counts_and_ended_workflow_runs_go_once_past_the_retention(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    old, recent = "now() - interval '91 days'", "now() - interval '89 days'"
    for at in (old, recent):
        await db.execute(f"INSERT INTO run_links (upstream_id, dependent_id, dependent_time, created_at) "
                         f"VALUES (nextval('tasks_id_seq'), 1, now(), {at})")  # fmt: skip
        await db.execute(f"INSERT INTO run_children (parent_id, parent_time, created_at) "
                         f"VALUES (nextval('tasks_id_seq'), now(), {at})")  # fmt: skip
    workflow = await db.fetchval("INSERT INTO workflows (name) VALUES ('w') RETURNING id")
    for status, at in (("succeeded", old), ("running", old), ("failed", recent)):
        await db.execute(
            f"INSERT INTO workflow_runs (workflow_id, scheduled_time, status, open, created_at, finished_at) "
            f"VALUES ($1, {at}, $2, 0, {at}, CASE WHEN $2 = 'running' THEN NULL ELSE {at} END)",
            workflow,
            status,
        )
    done = await purge(pool, 90, 1000)
    assert done.flow == 1
    assert await db.fetchval("SELECT count(*) FROM run_links") == 1
    assert await db.fetchval("SELECT count(*) FROM run_children") == 1
    kept = await db.fetch("SELECT status FROM workflow_runs ORDER BY status")
    assert [r["status"] for r in kept] == ["failed", "running"]  # a run not ended stays, whatever its age


async def _aged(db: asyncpg.Connection, run_id: int, days: int, status: str = "cancelled") -> int:
    """Back-dates a run (to a day no partition holds: the default one) and its task's row; returns the task's id."""
    task_id: int = await db.fetchval(
        "UPDATE task_schedule SET status = $2::run_status, scheduled_time = scheduled_time - make_interval(days => $3),"
        " finished_at = CASE WHEN $2 = 'cancelled' THEN now() - make_interval(days => $3) END"
        " WHERE id = $1 RETURNING task_id",
        run_id,
        status,
        days,
    )
    await db.execute(
        "UPDATE tasks SET created_at = created_at - make_interval(days => $2) WHERE id = $1", task_id, days
    )
    return task_id


async def test_one_off_rows_of_defer_submit_and_spawn_go_once_their_run_is_purged_and_no_other_task_does(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    by_hand = await new_task(db, "by-hand", "noop")
    hand_run = await db.fetchval("SELECT id FROM task_schedule WHERE task_id = $1", by_hand.id)
    old = {
        "api": await _aged(db, hand_run, 91),
        "defer": await _aged(db, await defer(db, "noop", {}), 91),
        "submit": await _aged(db, await submit(db, b'{"v": 1, "type": "noop"}'), 91),
    }
    parent = await defer(db, "noop", {})
    run = await db.fetchrow("SELECT task_id, scheduled_time FROM task_schedule WHERE id = $1", parent)
    assert run is not None
    await start_runs(db, "w", [StartRequest(parent, 1, 60, run["scheduled_time"])])
    async with db.transaction():
        ref = Parent(parent, run["task_id"], run["scheduled_time"], 10, 10)
        (child,) = await spawn(db, ref, [SpawnSpec(type="noop")])
    old["spawn"] = await _aged(db, child.run_id, 91)
    unfinished = await _aged(db, await defer(db, "noop", {}), 91, status="scheduled")  # a run not over stays
    recent = await _aged(db, await defer(db, "noop", {}), 30)

    done = await purge(pool, 90, 1000)

    assert done.tasks == 3
    left = {r["id"] for r in await db.fetch("SELECT id FROM tasks")}
    assert {old["api"], unfinished, recent} <= left
    assert not {old["defer"], old["submit"], old["spawn"]} & left
    assert (await purge(pool, 90, 1000)).tasks == 0
