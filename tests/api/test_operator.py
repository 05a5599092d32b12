"""The operator's dashboard over HTTP (issue 16): retrying a failed or dead run as its next attempt, the task listing's
next and last runs, the queue pressure on both transports, and the capacity forecast kept per bucket and set beside
the compute the bucket used once it is over."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime, timedelta
from typing import Any

import aiormq
import asyncpg
import httpx
import pytest

import capacity.service
from api.app import create_app
from api.routes import pressure
from taskmill import broker
from taskmill.models import Schedule, Task
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.forecasts import apportion
from taskmill.store.processors import register
from taskmill.store.runs import Outcome, Start, StartRequest, claim_due, finish_runs, start_runs
from tests.api.conftest import bearer
from tests.helpers import new_task
from tests.transports import BOTH, publish

WRITE = bearer()
READ = bearer("tasks:read")


async def ended_run(
    db: asyncpg.Connection, task_id: int, status: str, *, ago: str = "1 minute", error: str = "boom", **columns: Any
) -> int:
    """A run of the task that started (attempt 1) and ended `status` at `ago` before now, its attempt's result kept
    as a processor keeps it. `columns`: more of the run's columns, set when it is made."""
    names = ", ".join(["task_id", "scheduled_time", *columns])
    values = ", ".join(["$1", f"now() - interval '{ago}'", *(f"${i + 2}" for i in range(len(columns)))])
    run_id: int = await db.fetchval(
        f"INSERT INTO task_schedule ({names}) VALUES ({values}) RETURNING id", task_id, *columns.values()
    )
    await db.execute(
        "UPDATE task_schedule SET status = 'running', attempt = 1, started_at = now(), worker = 'w1' WHERE id = $1",
        run_id,
    )
    await db.execute(
        "UPDATE task_schedule SET status = $2::run_status, finished_at = now(), error = $3 WHERE id = $1",
        run_id,
        status,
        error,
    )
    await db.execute(
        """INSERT INTO task_results (run_id, attempt, status, started_at, finished_at, duration_ms, worker, error,
                                     scheduled_time)
           SELECT id, 1, status, started_at, finished_at, 7.5, worker, error, scheduled_time FROM task_schedule
           WHERE id = $1""",
        run_id,
    )
    return run_id


async def run_row(db: asyncpg.Connection, run_id: int) -> asyncpg.Record:
    row = await db.fetchrow("SELECT *, status::text AS state FROM task_schedule WHERE id = $1", run_id)
    assert row is not None
    return row


# --- Retry -------------------------------------------------------------------------------------------------------


async def test_a_dead_run_is_retried_as_its_next_attempt_and_keeps_its_history(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "flaky", max_retries=1, active=False)
    run_id = await ended_run(db, task.id, "dead", error="HTTP 503")

    response = await client.post(f"/runs/{run_id}/retry", headers=WRITE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["status"], body["attempt"], body["finished_at"], body["worker"]) == (
        run_id,
        "scheduled",
        1,
        None,
        None,
    )
    assert body["error"] == "HTTP 503"  # the last error, until the new attempt starts

    # Through the claim, the start and the outcome as the roles do it: the message is for attempt 2.
    (out,) = await claim_due(db, 10, 30.0)
    message = json.loads(out.body)
    assert (out.run_id, message["attempt"], message["lost"]) == (run_id, 2, 0)
    row = await run_row(db, run_id)
    assert await start_runs(db, "w2", [StartRequest(run_id, 2, 30.0, row["scheduled_time"])]) == [Start.WON]
    assert (await run_row(db, run_id))["error"] is None
    now = await db.fetchval("SELECT now()")
    outcome = Outcome(run_id, 2, RunState.SUCCEEDED, '{"ok": true}', None, now, 5.0, row["scheduled_time"])
    assert await finish_runs(db, [outcome]) == [True]

    detail = (await client.get(f"/runs/{run_id}", headers=READ)).json()
    assert (detail["status"], detail["attempt"]) == ("succeeded", 2)
    assert [(a["attempt"], a["status"], a["error"]) for a in detail["attempts"]] == [
        (1, "dead", "HTTP 503"),
        (2, "succeeded", None),
    ]
    assert [(t["from_status"], t["to_status"]) for t in detail["transitions"]] == [
        (None, "scheduled"),
        ("scheduled", "running"),
        ("running", "dead"),
        ("dead", "scheduled"),
        ("scheduled", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


async def test_a_failed_run_long_past_its_grace_is_retried_not_taken_for_missed(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    cron = Schedule(kind="cron", cron="0 * * * *")
    task = await new_task(db, "hourly", schedule=cron, misfire="skip", overlap="skip", active=False)
    old = await ended_run(db, task.id, "failed", ago="3 hours")
    later = await ended_run(db, task.id, "failed", ago="2 hours")
    for run_id in (old, later):
        assert (await client.post(f"/runs/{run_id}/retry", headers=WRITE)).status_code == 200
    # Both due in one claim: neither is missed (3 hours past a grace of 60 s), nor skipped for overlapping the other.
    claimed = await claim_due(db, 10, 30.0)
    assert sorted(o.run_id for o in claimed) == sorted([old, later])
    assert {(await run_row(db, r))["state"] for r in (old, later)} == {"queued"}


async def test_a_retried_run_of_a_capped_task_counts_once_while_in_flight(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "capped", max_concurrency=1, max_retries=2, active=False)
    key = f"task:{task.id}"
    run_id = await ended_run(db, task.id, "dead", ago="10 minutes", concurrency_key=key)
    held = "SELECT held FROM concurrency_slots WHERE key = $1"
    assert await db.fetchval(held, key) == 0
    assert (await client.post(f"/runs/{run_id}/retry", headers=WRITE)).status_code == 200
    assert (await run_row(db, run_id))["concurrency_key"] is None  # set again when handed out
    assert await db.fetchval(held, key) == 0  # a dead run was not in flight: nothing counted down
    other = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() - interval '1 second') RETURNING id",
        task.id,
    )
    # The retried run (older) takes the only slot; the other waits.
    assert [o.run_id for o in await claim_due(db, 10, 30.0)] == [run_id]
    assert await db.fetchval(held, key) == 1
    assert (await run_row(db, other))["state"] == "scheduled"
    row = await run_row(db, run_id)
    assert await start_runs(db, "w2", [StartRequest(run_id, 2, 30.0, row["scheduled_time"])]) == [Start.WON]
    now = await db.fetchval("SELECT now()")
    failed = Outcome(run_id, 2, RunState.DEAD, None, "again", now, 3.0, row["scheduled_time"])
    assert await finish_runs(db, [failed]) == [True]
    assert await db.fetchval(held, key) == 0
    # Retried once more: it counts again while in flight, and only once.
    assert (await client.post(f"/runs/{run_id}/retry", headers=WRITE)).status_code == 200
    await db.execute("UPDATE task_schedule SET lease_until = NULL WHERE id = $1", other)  # no second's hold
    assert sorted(o.run_id for o in await claim_due(db, 10, 30.0)) == [run_id]
    assert await db.fetchval(held, key) == 1


async def test_only_a_failed_or_dead_run_may_be_retried_and_a_refusal_names_the_reason(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "one", active=False)
    scheduled = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() + interval '1 hour') RETURNING id",
        task.id,
    )
    succeeded = await ended_run(db, task.id, "succeeded", ago="2 minutes")
    for run_id, status in ((scheduled, "scheduled"), (succeeded, "succeeded")):
        response = await client.post(f"/runs/{run_id}/retry", headers=WRITE)
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == f"run {run_id} is {status}: only a failed or dead run can be retried"
    missing = await client.post("/runs/987654321/retry", headers=WRITE)
    assert missing.status_code == 404 and missing.json()["detail"] == "no run 987654321"

    # Retried once; a second click finds it scheduled.
    failed = await ended_run(db, task.id, "failed", ago="3 minutes")
    assert (await client.post(f"/runs/{failed}/retry", headers=WRITE)).status_code == 200
    again = await client.post(f"/runs/{failed}/retry", headers=WRITE)
    assert again.status_code == 409
    assert again.json()["detail"] == f"run {failed} is scheduled: only a failed or dead run can be retried"

    step = await ended_run(db, task.id, "failed", ago="4 minutes", workflow_run_id=77)
    spawned = await ended_run(db, task.id, "dead", ago="5 minutes", parent_id=88)
    for run_id, reason in (
        (step, f"run {step} is a step of workflow run 77, which counted its outcome already: run the workflow again"),
        (
            spawned,
            f"run {spawned} was spawned by run 88, which counted its outcome already: a spawned run is not retried on "
            "its own",
        ),
    ):
        response = await client.post(f"/runs/{run_id}/retry", headers=WRITE)
        assert (response.status_code, response.json()["detail"]) == (409, reason)
        assert (await run_row(db, run_id))["state"] in ("failed", "dead")

    gone = await ended_run(db, task.id, "dead", ago="6 minutes")
    assert (await client.delete(f"/tasks/{task.id}", headers=WRITE)).status_code == 204
    response = await client.post(f"/runs/{gone}/retry", headers=WRITE)
    assert (response.status_code, response.json()["detail"]) == (
        409,
        f"run {gone} is of task {task.id}, which was deleted",
    )
    assert (await run_row(db, gone))["state"] == "dead"


async def test_retrying_needs_the_write_scope(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    task = await new_task(db, "scoped", active=False)
    run_id = await ended_run(db, task.id, "failed")
    assert (await client.post(f"/runs/{run_id}/retry")).status_code == 401
    refused = await client.post(f"/runs/{run_id}/retry", headers=READ)
    assert refused.status_code == 403
    assert (await run_row(db, run_id))["state"] == "failed"
    assert (await client.post(f"/runs/{run_id}/retry", headers=bearer("admin"))).status_code == 200


# --- The listing's next and last runs ----------------------------------------------------------------------------


async def _without_runs(db: asyncpg.Connection, name: str) -> Task:
    """A paused one-off without its run (held while paused): the test makes the runs it needs."""
    task = await new_task(db, name, active=False)
    await db.execute("DELETE FROM task_schedule WHERE task_id = $1", task.id)
    return task


async def test_the_listing_gives_each_task_its_next_run_and_its_latest_run(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    busy = await _without_runs(db, "busy")
    await ended_run(db, busy.id, "succeeded", ago="2 hours")
    latest = await ended_run(db, busy.id, "dead", ago="1 hour")
    at = (
        "INSERT INTO task_schedule (task_id, scheduled_time, status) VALUES ($1, now() + $2::interval, $3) "
        "RETURNING scheduled_time"
    )
    await db.fetchval(at, busy.id, timedelta(minutes=5), "cancelled")  # not a next run: it will not run
    upcoming = await db.fetchval(at, busy.id, timedelta(minutes=10), "scheduled")
    await db.fetchval(at, busy.id, timedelta(minutes=20), "scheduled")
    # Found beyond the day next to now, both ways (in the default partition: the test's days are not prepared).
    rare = await _without_runs(db, "rare")
    long_ago = await ended_run(db, rare.id, "failed", ago="3 days")
    far = await db.fetchval(at, rare.id, timedelta(days=2), "scheduled")
    await _without_runs(db, "idle")

    page = (await client.get("/tasks", headers=READ)).json()
    listed = {t["name"]: t for t in page["items"]}
    assert datetime.fromisoformat(listed["busy"]["next_run_at"]) == upcoming
    last = listed["busy"]["last_run"]
    assert (last["id"], last["status"]) == (latest, "dead")
    assert datetime.fromisoformat(last["finished_at"]) == (await run_row(db, latest))["finished_at"]
    assert datetime.fromisoformat(listed["rare"]["next_run_at"]) == far
    assert (listed["rare"]["last_run"]["id"], listed["rare"]["last_run"]["status"]) == (long_ago, "failed")
    assert (listed["idle"]["next_run_at"], listed["idle"]["last_run"]) == (None, None)
    # Sorted by name, newest first, and a page of one: the same, page by page.
    first = (await client.get("/tasks", params={"sort": "-name", "limit": 1}, headers=READ)).json()
    assert [t["name"] for t in first["items"]] == ["rare"] and first["items"][0]["last_run"]["id"] == long_ago
    # One task read on its own is its definition: no runs.
    assert "next_run_at" not in (await client.get(f"/tasks/{busy.id}", headers=READ)).json()


# --- Queue pressure ----------------------------------------------------------------------------------------------


@BOTH
async def test_pressure_gives_the_backlog_the_queues_and_live_beside_required_processors(
    client: httpx.AsyncClient, db: asyncpg.Connection, api_settings: Settings, transport: str
) -> None:
    task = await new_task(db, "due", estimated_ms=4000, active=False)
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, now() - make_interval(secs => 300 - s) FROM generate_series(0, 2) s",
        task.id,
    )
    for worker in ("p1", "p2"):
        await register(db, worker, "none")
    for _ in range(2):
        await publish(api_settings, b'{"v": 1}', "noop")

    response = await client.get("/pressure", headers=READ)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transport"] == transport
    assert body["due_backlog_runs"] == 3
    assert 299 <= body["oldest_due_s"] < 330
    # One name per lane whichever the transport (over PostgreSQL, the rows standing for them).
    assert body["queues"] == [
        {"queue": "work", "ready": 2},
        {"queue": "work.urgent", "ready": 0},
        {"queue": "dead", "ready": 0},
    ]
    assert body["queues_unknown"] is None
    # Three due runs of 4,000 ms count in the bucket under way: ceil(12,000 / (10,000 * 0.9)) = 2.
    assert (body["processors_live"], body["processors_required"]) == (2, 2)
    assert (body["required_ms"], body["bucket_seconds"]) == (12_000.0, 60)


async def test_pressure_with_the_broker_away_leaves_the_depths_unknown_and_answers_all_the_same(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(api_settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://taskmill.test") as c:

            async def refused(*_: object) -> tuple[int, int]:
                raise aiormq.exceptions.AMQPConnectionError("connection reset")

            monkeypatch.setattr(broker, "probe_queue", refused)  # what queue_depths asks
            body = (await c.get("/pressure", headers=READ)).json()
            assert (body["queues"], body["queues_unknown"]) == (
                [],
                "the broker did not answer: AMQPConnectionError: connection reset",
            )

            async def silent(*_: object) -> tuple[int, int]:
                await asyncio.sleep(30)
                return 0, 0

            monkeypatch.setattr(broker, "probe_queue", silent)
            monkeypatch.setattr(pressure, "PROBE_TIMEOUT_S", 0.2)
            body = (await c.get("/pressure", headers=READ)).json()
            assert (body["queues"], body["queues_unknown"]) == ([], "the broker did not answer in time")

            await app.state.broker.close()
            response = await c.get("/pressure", headers=READ)
            assert response.status_code == 200, response.text
            assert (response.json()["queues"], response.json()["queues_unknown"]) == (
                [],
                "the broker cannot be reached",
            )
            assert response.json()["processors_live"] == 0


async def test_pressure_needs_the_read_scope(client: httpx.AsyncClient) -> None:
    assert (await client.get("/pressure")).status_code == 401
    assert (await client.get("/pressure", headers=bearer("tasks:write"))).status_code == 403


# --- The forecast kept, beside the compute used ------------------------------------------------------------------


async def test_the_capacity_role_keeps_the_last_forecast_made_before_each_bucket_began(
    db: asyncpg.Connection, api_settings: Settings
) -> None:
    task = await new_task(db, "ahead", estimated_ms=5000, active=False)
    soon = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, date_trunc('minute', now()) + interval '10 minutes 5 seconds' + make_interval(secs => s) "
        "FROM generate_series(0, 2) s RETURNING scheduled_time",
        task.id,
    )
    under_way = await db.fetchval("SELECT date_trunc('minute', now())")
    await db.execute(
        "INSERT INTO capacity_forecasts VALUES ($1, 60, 9, 123, now() - interval '1 minute'), "
        "($1 - interval '3 days', 60, 1, 1, now() - interval '3 days')",
        under_way,
    )
    await capacity.service.run(api_settings, until_idle=True)
    rows = await db.fetch("SELECT * FROM capacity_forecasts ORDER BY bucket_start")
    # The bucket under way kept what was forecast before it began; the one three days old is gone.
    assert (rows[0]["bucket_start"], rows[0]["required_ms"], rows[0]["runs"]) == (under_way, 123.0, 9)
    ahead = rows[1:]
    assert all(r["bucket_start"] > r["made_at"] and r["bucket_seconds"] == 60 for r in ahead)
    assert ahead[0]["bucket_start"] == under_way + timedelta(minutes=1)
    assert len(ahead) in (180, 181)  # to the bucket holding the horizon
    by_start = {r["bucket_start"]: r for r in ahead}
    busy = by_start[soon.replace(second=0)]
    assert (busy["runs"], busy["required_ms"]) == (3, 15_000.0)
    assert sum(r["runs"] for r in ahead) == 3
    first_made = ahead[0]["made_at"]

    # A later plan writes the buckets still ahead again, with what it sees then.
    await db.execute("UPDATE task_schedule SET status = 'cancelled' WHERE task_id = $1", task.id)
    await capacity.service.run(api_settings, until_idle=True)
    rows = await db.fetch("SELECT * FROM capacity_forecasts WHERE bucket_start > $1", under_way)
    again = {r["bucket_start"]: r for r in rows}
    assert again[busy["bucket_start"]]["required_ms"] == 0.0
    assert all(r["made_at"] >= first_made for r in again.values())


async def test_the_summary_sets_each_past_bucket_forecast_beside_the_compute_its_attempts_used(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # Three whole minutes, 10 minutes before the five-minute bucket under way: b0 and b1 have a forecast, b2 none.
    base: datetime = await db.fetchval(
        "SELECT date_trunc('hour', now()) + make_interval(mins => extract(minute FROM now())::int / 5 * 5 - 10)"
    )
    b = [base + timedelta(minutes=i) for i in range(3)]
    await db.executemany(
        "INSERT INTO capacity_forecasts VALUES ($1, 60, $2, $3, $1::timestamptz - interval '30 seconds')",
        [(b[0], 3, 6000.0), (b[1], 1, 3000.0)],
    )
    task = await new_task(db, "used", active=False)
    # Attempts by the minute they finished in: 2,000 + 2,500 ms, and one lost with its processor (no duration); 4,000;
    # 1,000. A run's results go in its run's partition: the runs were scheduled an hour earlier.
    for minute, duration in ((0, 2000.0), (0, 2500.0), (0, None), (1, 4000.0), (2, 1000.0)):
        run_id = await db.fetchval(
            "INSERT INTO task_schedule (task_id, scheduled_time, status) "
            "VALUES ($1, $2::timestamptz - interval '1 hour' + make_interval(secs => $3), 'succeeded') RETURNING id",
            task.id,
            b[minute],
            len(await db.fetch("SELECT 1 FROM task_schedule")),
        )
        await db.execute(
            "INSERT INTO task_results (run_id, attempt, status, finished_at, duration_ms, scheduled_time) "
            "SELECT id, 1, 'succeeded', $2, $3, scheduled_time FROM task_schedule WHERE id = $1",
            run_id,
            b[minute] + timedelta(seconds=20),
            duration,
        )

    body = (await client.get("/scheduled-tasks-summary", headers=READ)).json()
    past = body["past"]
    assert len(past["buckets"]) == 180
    assert datetime.fromisoformat(past["buckets"][-1]["start"]) + timedelta(seconds=60) == datetime.fromisoformat(
        body["buckets"][0]["start"]
    )
    seen = {datetime.fromisoformat(x["start"]): x for x in past["buckets"]}
    expected = [
        (6000.0, 4500.0, 2, 1500.0, 100 * 1500 / 4500),
        (3000.0, 4000.0, 1, -1000.0, -25.0),
        (None, 1000.0, 1, None, None),
    ]
    for at, (forecast, used, attempts, error, percent) in zip(b, expected, strict=True):
        x = seen[at]
        assert (x["forecast_ms"], x["used_ms"], x["attempts"], x["error_ms"]) == (forecast, used, attempts, error)
        assert x["error_percent"] == (None if percent is None else pytest.approx(percent))
    assert sum(x["used_ms"] for x in past["buckets"]) == past["used_ms"] == 9500.0
    assert (past["forecast_buckets"], past["forecast_ms"], past["error_ms"]) == (2, 9000.0, 500.0)
    assert past["error_percent"] == pytest.approx(100 * 500 / 8500)
    assert past["mean_absolute_error_ms"] == 1250.0

    # In five-minute buckets: the three minutes are one bucket, its forecast what was recorded within it.
    wide = (await client.get("/scheduled-tasks-summary", params={"bucket": 300}, headers=READ)).json()["past"]
    assert len(wide["buckets"]) == 36
    (x,) = (x for x in wide["buckets"] if datetime.fromisoformat(x["start"]) == base)
    assert (x["forecast_ms"], x["used_ms"], x["attempts"], x["error_ms"]) == (9000.0, 9500.0, 4, -500.0)


def test_a_recorded_bucket_counts_in_each_bucket_it_overlaps_by_the_time_they_share() -> None:
    start = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    into: list[float | None] = [None] * 4
    # 120 s from 90 s on: half of bucket 1, all of bucket 2, half of bucket 3 (60 s buckets).
    apportion(into, start, 60, start + timedelta(seconds=90), 120, 8000.0)
    assert into == [None, 2000.0, 4000.0, 2000.0]
    # Partly before the window: only its share within counts.
    apportion(into, start, 60, start - timedelta(seconds=30), 60, 600.0)
    assert into == [300.0, 2000.0, 4000.0, 2000.0]
    assert math.isclose(sum(x or 0 for x in into), 8300.0)
