"""Scheduled workflows: the scheduler creates their runs minutes ahead, once each however many replicas run, and
the capacity forecast counts every step of every firing the same before and after they are rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from scheduler.workflows import horizon, materialize_workflows
from taskmill.models import Schedule
from taskmill.planning.plan import Options
from taskmill.settings import Settings
from taskmill.store.workflows import create_workflow
from taskmill.workflows import WorkflowCreate
from tests.planning.test_plan import plan_twice

STEPS = [
    {"name": "a", "type": "noop", "estimated_ms": 1000},
    {"name": "b", "type": "noop", "estimated_ms": 2000, "depends_on": ["a"]},
    {"name": "c", "type": "noop", "estimated_ms": 3000, "depends_on": ["a"]},
]


async def _workflow(db: asyncpg.Connection, name: str, schedule: Schedule) -> int:
    stored = await create_workflow(db, WorkflowCreate(name=name, schedule=schedule, tasks=STEPS))
    return stored.workflow.id


async def test_replicas_create_each_firing_once_with_a_run_per_step(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    workflow_id = await _workflow(db, "minutely", Schedule(kind="cron", cron="* * * * *"))
    now = datetime.now(UTC)
    created = await asyncio.gather(*(materialize_workflows(pool, settings, now) for _ in range(4)))
    firings = await db.fetch("SELECT id, scheduled_time, open FROM workflow_runs WHERE workflow_id = $1", workflow_id)
    end = horizon(now, settings)
    expected = [
        t for t in (now.replace(second=0, microsecond=0) + timedelta(minutes=k) for k in range(1, 6)) if t < end
    ]
    assert sorted(r["scheduled_time"] for r in firings) == expected
    assert sum(created) == len(expected)
    runs = await db.fetch(
        "SELECT s.workflow_run_id, t.name, s.status::text, s.blockers FROM task_schedule s "
        "JOIN tasks t ON t.id = s.task_id ORDER BY s.workflow_run_id, t.name"
    )
    assert len(runs) == 3 * len(expected)
    assert {(r["name"], r["status"], r["blockers"]) for r in runs} == {
        ("a", "scheduled", 0),
        ("b", "blocked", 1),
        ("c", "blocked", 1),
    }
    assert await materialize_workflows(pool, settings, now) == 0  # up to date


async def test_a_once_workflow_fires_once_and_an_unscheduled_one_never(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    at = datetime.now(UTC) + timedelta(seconds=30)
    once = await _workflow(db, "once", Schedule(kind="once", at=at))
    await create_workflow(db, WorkflowCreate(name="manual", tasks=STEPS))
    now = datetime.now(UTC)
    assert await materialize_workflows(pool, settings, now) == 1
    assert await materialize_workflows(pool, settings, now + timedelta(minutes=10)) == 0
    assert [tuple(r) for r in await db.fetch("SELECT workflow_id, scheduled_time FROM workflow_runs")] == [(once, at)]


async def test_the_forecast_counts_every_step_of_every_firing_before_and_after_they_are_rows(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await _workflow(db, "minutely", Schedule(kind="cron", cron="* * * * *"))
    options = Options(horizon_s=3 * 3600, bucket_s=600)

    async def scheduler_runs() -> None:
        await materialize_workflows(pool, settings, datetime.now(UTC))

    before, after = await plan_twice(pool, options, scheduler_runs)
    # three steps a minute for 3 h and part of a bucket
    assert 3 * 180 <= before.forecast.runs.sum() <= 3 * 191
    assert before.forecast.projected_runs.sum() == before.forecast.runs.sum()
    assert after.forecast.projected_runs.sum() < after.forecast.runs.sum()  # some are rows now
    assert after.forecast.runs.tolist() == before.forecast.runs.tolist()
    assert after.forecast.required_ms.tolist() == before.forecast.required_ms.tolist()
