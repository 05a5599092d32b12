"""The plan from a real database: history over the past year, estimates for types without one, and every run
counted once whether the scheduler has materialized it or not."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from scheduler.materialize import materialize
from taskmill.models import Schedule
from taskmill.planning.plan import History, Options, Plan, make_plan
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.capacity import type_summaries
from taskmill.store.runs import Outcome, Start, StartRequest, finish_runs, start_runs
from tests.helpers import new_task

# A result carries its run's scheduled time (the partition it shares with its run).
RUN_AT = "(SELECT scheduled_time FROM task_schedule WHERE id = $1)"


async def add_result(
    db: asyncpg.Connection, task_id: int, ms: float, days_ago: float, status: str = "succeeded"
) -> None:
    run = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time, status) "
        "VALUES ($1, now() - make_interval(secs => $2), $3) RETURNING id",
        task_id,
        days_ago * 86400 + ms,
        status,
    )
    await db.execute(
        "INSERT INTO task_results (run_id, attempt, status, finished_at, duration_ms, scheduled_time) "
        f"VALUES ($1, 1, $2, now() - make_interval(secs => $3), $4, {RUN_AT})",
        run,
        status,
        days_ago * 86400,
        ms,
    )


async def test_the_average_covers_the_past_year_of_finished_attempts_per_type(db: asyncpg.Connection) -> None:
    noop = (await new_task(db, "n", "noop")).id
    sleep = (await new_task(db, "s", "sleep", {"ms": 1})).id
    for ms, days in ((100.0, 1), (300.0, 200), (500.0, 364), (10_000.0, 366), (99_999.0, 800)):
        await add_result(db, noop, ms, days)
    await add_result(db, sleep, 40.0, 3, "failed")
    await add_result(db, sleep, 20.0, 3)
    # A processor lost mid-run leaves an attempt without a duration: it says nothing about elapsed time.
    lost = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now()) RETURNING id", sleep
    )
    await db.execute(
        f"INSERT INTO task_results (run_id, attempt, status, finished_at, scheduled_time) "
        f"VALUES ($1, 1, 'failed', now(), {RUN_AT})",
        lost,
    )
    summaries = {s.type: s for s in await type_summaries(db)}
    assert set(summaries) == {"noop", "sleep"}
    n = summaries["noop"]
    assert (n.runs, n.failures, n.mean_ms, n.p50_ms) == (3, 0, 300.0, 300.0)
    assert n.p95_ms == pytest.approx(480.0)  # 300 + 0.9 * (500 - 300), linear interpolation
    s = summaries["sleep"]
    assert (s.runs, s.failures, s.mean_ms) == (2, 1, 30.0)


async def plan_twice(pool: asyncpg.Pool, options: Options, between: object) -> tuple[Plan, Plan]:
    """Two plans in the same first bucket, with `between()` awaited in between (tried again across a boundary)."""
    for _ in range(3):
        first = await make_plan(pool, History(), options)
        await between()  # type: ignore[operator]
        second = await make_plan(pool, History(), options)
        if first.start == second.start:
            return first, second
    raise AssertionError("three bucket boundaries in a row: the machine is far too slow")


async def test_every_run_is_counted_once_before_and_after_the_scheduler_materializes_it(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await new_task(db, "every-minute", schedule=Schedule(kind="cron", cron="* * * * *"), estimated_ms=5000)
    await new_task(db, "paris", schedule=Schedule(kind="cron", cron="*/10 * * * *", timezone="Europe/Paris"))
    await new_task(db, "interval", schedule=Schedule(kind="interval", every_seconds=420), estimated_ms=2000)
    options = Options(horizon_s=3 * 3600, bucket_s=600)

    async def scheduler_runs() -> None:
        await materialize(pool, settings, datetime.now().astimezone())

    before, after = await plan_twice(pool, options, scheduler_runs)
    # every minute, every 10 min and every 7 min for 3 h and a part of a bucket: about 180 + 18 + 25
    assert 215 < before.forecast.runs.sum() < 235
    assert before.forecast.projected_runs.tolist() == before.forecast.runs.tolist()  # nothing was a row yet
    assert after.forecast.projected_runs.sum() == 0  # now everything is
    assert after.forecast.runs.tolist() == before.forecast.runs.tolist()
    assert after.forecast.required_ms.tolist() == before.forecast.required_ms.tolist()


async def test_runs_weigh_their_types_history_or_their_tasks_estimate(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # Inactive: no run of their own, only the rows inserted here.
    noop = (await new_task(db, "n", "noop", estimated_ms=7000, active=False)).id
    sleep = (await new_task(db, "s", "sleep", {"ms": 1}, estimated_ms=4000, active=False)).id
    for ms in (2000.0, 4000.0):  # noop's history: 3,000 ms on average
        await add_result(db, noop, ms, 1)
    ahead = [(noop, 10), (noop, 20), (sleep, 30), (sleep, 2 * 3600)]
    await db.executemany(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() + make_interval(secs => $2))", ahead
    )
    plan = await make_plan(pool, History(), Options(horizon_s=3 * 3600, bucket_s=3 * 3600))
    assert plan.forecast.runs.sum() == 4
    assert plan.forecast.required_ms.sum() == 3000 + 3000 + 4000 + 4000
    # The history is read once and kept for the TTL: a fresh History sees new results, a warm one not yet.
    history = History(ttl_s=3600)
    assert (await make_plan(pool, history, Options())).forecast.required_ms.sum() == 14_000
    await add_result(db, sleep, 1.0, 1)
    assert (await make_plan(pool, history, Options())).forecast.required_ms.sum() == 14_000
    assert (await make_plan(pool, History(), Options())).forecast.required_ms.sum() == 3000 * 2 + 1 * 2


async def test_runs_ended_or_of_inactive_tasks_are_not_counted_and_those_handed_out_count_now(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    task = (await new_task(db, "n", "noop")).id  # immediate: its run is due now and waiting
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time, status) VALUES "
        "($1, now() + interval '1 minute', 'scheduled'), ($1, now() - interval '1 minute', 'queued'), "
        "($1, now() + interval '2 minutes', 'cancelled'), ($1, now() - interval '1 hour', 'succeeded')",
        task,
    )
    await new_task(db, "paused", schedule=Schedule(kind="cron", cron="* * * * *"), active=False)
    await new_task(db, "paused-once", active=False)  # its run held until it is resumed
    plan = await make_plan(pool, History(), Options())
    assert plan.forecast.runs.sum() == 3
    assert plan.forecast.runs[0] >= 2  # the waiting run and the one in the transport count now


async def test_an_attempt_counts_under_the_type_it_ran_as_even_after_its_task_changes_type(
    db: asyncpg.Connection,
) -> None:
    task = await new_task(db, "changes", "noop")
    row = await db.fetchrow("SELECT id, scheduled_time FROM task_schedule WHERE task_id = $1", task.id)

    assert row is not None

    run, at = row
    assert await start_runs(db, "w", [StartRequest(run, 1, 30.0, at)]) == [Start.WON]
    done = Outcome(run, 1, RunState.SUCCEEDED, None, None, datetime.now(UTC), 12.0, at, type="noop")
    assert await finish_runs(db, [done]) == [True]
    assert await db.fetchval("SELECT type FROM task_results WHERE run_id = $1", run) == "noop"
    await db.execute("UPDATE tasks SET type = 'sleep', payload = '{\"ms\": 1}' WHERE id = $1", task.id)
    assert [(s.type, s.runs, s.mean_ms) for s in await type_summaries(db)] == [("noop", 1, 12.0)]


def test_per_run_compute_and_distinct_ids_agree_with_sorting_for_dense_and_sparse_ids() -> None:
    import numpy as np

    from taskmill.planning.plan import per_run
    from taskmill.store.capacity import distinct_ids

    rng = np.random.default_rng(7)
    for ids in (rng.integers(1, 500, 10_000), rng.integers(1, 2**40, 10_000)):  # a table, then the fallback
        ids = ids.astype(np.int64)
        tasks = distinct_ids(ids)
        assert np.array_equal(tasks, np.unique(ids))
        ms = rng.random(len(tasks)) * 1000
        assert np.array_equal(per_run(ids, tasks, ms), ms[np.searchsorted(tasks, ids)])
    assert len(distinct_ids(np.empty(0, dtype=np.int64))) == 0


async def test_runs_handed_out_count_now_whole_and_runs_under_way_by_what_is_left_of_them(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    task = (await new_task(db, "s", "sleep", {"ms": 2000}, estimated_ms=2000)).id
    await db.execute("DELETE FROM task_schedule WHERE task_id = $1", task)
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time, status, started_at) "
        "SELECT $1, now() - make_interval(secs => i) - k * interval '1 ms', s::run_status, "
        "       CASE WHEN s = 'running' THEN now() - interval '500 ms' END "
        "FROM generate_series(1, 40) i, unnest(ARRAY['queued', 'retrying', 'running']) WITH ORDINALITY AS u(s, k)",
        task,
    )
    await db.execute(  # a run past its type's mean is still under way: it needs what is left, none
        "INSERT INTO task_schedule (task_id, scheduled_time, status, started_at) "
        "VALUES ($1, now() - interval '1 hour', 'running', now() - interval '10 s')",
        task,
    )
    plan = await make_plan(pool, History(), Options())
    assert plan.forecast.runs[0] == 121
    assert plan.forecast.runs[1:].sum() == 0
    # 80 waiting runs of 2,000 ms and 40 with 1,500 ms left: 220,000 ms, over 9,000 usable ms an instance.
    assert plan.forecast.required_ms[0] == pytest.approx(220_000, rel=0.01)
    assert plan.now == 25


async def test_a_backlog_of_runs_that_need_next_to_no_compute_still_asks_for_one_processor(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    task = (await new_task(db, "instant", "noop", estimated_ms=0)).id  # its run waits: no processor is alive
    await db.execute("UPDATE task_schedule SET status = 'queued' WHERE task_id = $1", task)
    plan = await make_plan(pool, History(), Options())
    assert (plan.forecast.required_ms[0], plan.now) == (0.0, 1)


async def test_a_per_second_task_is_forecast_at_3600_runs_an_hour_though_an_hour_of_it_is_rows(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """The scheduler holds an hour of a per-second task's runs (TASKMILL_SCHEDULER_RUNS_AHEAD); the forecast
    projects the rest from its watermark, so every hour of the horizon counts all its runs before and after."""
    await new_task(db, "every-second", schedule=Schedule(kind="interval", every_seconds=1))
    await new_task(db, "every-second-cron", schedule=Schedule(kind="cron", cron="* * * * * *"))
    options = Options(horizon_s=3 * 3600, bucket_s=3600)

    async def scheduler_runs() -> None:
        await materialize(pool, settings, datetime.now(UTC))

    before, after = await plan_twice(pool, options, scheduler_runs)
    assert await db.fetchval("SELECT count(*) FROM task_schedule") <= 2 * 3600 + 120  # an hour of each, not a day
    # The whole hours after the current one: 3600 runs of each task.
    assert before.forecast.runs[1:3].tolist() == [2 * 3600, 2 * 3600]
    assert after.forecast.runs.tolist() == before.forecast.runs.tolist()
    assert 0 < after.forecast.projected_runs.sum() < after.forecast.runs.sum()  # the rows, and the rest projected
