"""The whole pipeline in one process: scheduler, distributor and processors against the real database, over each
transport (RabbitMQ and PostgreSQL)."""

from __future__ import annotations

import time

import asyncpg
import pytest

from distributor.service import run as distributor_run
from processor.service import run as processor_run
from scheduler.service import run as scheduler_run
from taskmill.models import Schedule
from taskmill.settings import Settings
from taskmill.states import ScheduleKind
from tests.helpers import new_task, running, wait_for_statuses, wait_until
from tests.transports import BOTH, counts

# Every test here runs over RabbitMQ and over PostgreSQL alone.
pytestmark = BOTH

RUNS = 1000
PATH = ["->scheduled", "scheduled->queued", "queued->running", "running->succeeded"]


def _schedule(**fields: object) -> Schedule:
    return Schedule.model_validate(fields)


@pytest.mark.slow
async def test_a_thousand_due_runs_each_succeed_exactly_once(settings: Settings, db: asyncpg.Connection) -> None:
    # An hourly interval task, and no scheduler: the only runs are the thousand inserted below.
    task = await new_task(db, "bulk", "noop", schedule=_schedule(kind=ScheduleKind.INTERVAL, every_seconds=3600))
    wide = settings.model_copy(update={"concurrency": 50})
    async with running(distributor_run, settings), running(processor_run, wide), running(processor_run, wide):
        started = time.monotonic()
        await db.execute(
            """INSERT INTO task_schedule (task_id, scheduled_time)
               SELECT $1, now() - g * interval '1 millisecond' FROM generate_series(1, $2) g""",
            task.id,
            RUNS,
        )
        await wait_for_statuses(db, {"succeeded": RUNS}, timeout=60)
        took = time.monotonic() - started
    rate = f"{took:.2f} s ({RUNS / took:.0f} runs/s)"
    print(f"\n{RUNS} noop runs over {settings.transport_name}: inserted -> all succeeded in {rate}")

    results = await db.fetchrow(
        """SELECT count(*) AS rows, count(DISTINCT r.run_id) AS runs,
                  count(DISTINCT (s.task_id, s.scheduled_time)) AS instants,
                  count(*) FILTER (WHERE r.attempt = 1 AND r.status = 'succeeded' AND s.attempt = 1) AS first_try
           FROM task_results r JOIN task_schedule s ON s.id = r.run_id"""
    )
    assert results is not None
    assert dict(results) == {"rows": RUNS, "runs": RUNS, "instants": RUNS, "first_try": RUNS}

    paths = await db.fetch(
        """SELECT run_id, array_agg(coalesce(from_status::text, '') || '->' || to_status::text ORDER BY at) AS path
           FROM run_audit GROUP BY run_id"""
    )
    assert len(paths) == RUNS
    odd = [(r["run_id"], r["path"]) for r in paths if r["path"] != PATH]
    assert not odd, f"{len(odd)} runs took another path, e.g. {odd[:3]}"

    assert await counts(settings) == {"work": 0, "dead": 0}


@pytest.mark.timing
@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param(_schedule(kind=ScheduleKind.CRON, cron="* * * * * *"), id="cron-every-second"),
        pytest.param(_schedule(kind=ScheduleKind.INTERVAL, every_seconds=1), id="interval-1s"),
    ],
)
async def test_a_per_second_task_runs_each_second_within_a_second_of_its_time(
    settings: Settings, db: asyncpg.Connection, schedule: Schedule
) -> None:
    async with running(scheduler_run, settings), running(distributor_run, settings), running(processor_run, settings):
        task = await new_task(db, "tick", "noop", schedule=schedule)

        async def two_succeeded() -> bool:
            n: int = await db.fetchval(
                "SELECT count(*) FROM task_schedule WHERE task_id = $1 AND status = 'succeeded'", task.id
            )
            return n >= 2

        await wait_until(two_succeeded, timeout=6, what="two runs to succeed")
        # Taken while everything runs: a run due over a second ago and not started yet is late too.
        late_unstarted = await db.fetch(
            """SELECT id, scheduled_time, status::text FROM task_schedule
               WHERE task_id = $1 AND started_at IS NULL AND scheduled_time < now() - interval '1 second'""",
            task.id,
        )
    started = await db.fetch(
        """SELECT id, scheduled_time, started_at, extract(epoch FROM started_at - scheduled_time) AS lag_s
           FROM task_schedule WHERE task_id = $1 AND started_at IS NOT NULL ORDER BY scheduled_time""",
        task.id,
    )
    lags = [(r["scheduled_time"].isoformat(), round(float(r["lag_s"]), 3)) for r in started]
    assert len(started) >= 2
    assert all(0 <= lag < 1 for _, lag in lags), f"start lag per run (scheduled, seconds): {lags}"
    assert not late_unstarted, f"due over 1 s ago and not started: {[tuple(r) for r in late_unstarted]}"
