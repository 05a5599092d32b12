"""GET /task-summary and GET /scheduled-tasks-summary: the capacity plan over HTTP."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta

import asyncpg
import httpx

from tests.api.conftest import bearer
from tests.helpers import new_task

# A result carries its run's scheduled time (the partition it shares with its run).
RUN_AT = "(SELECT scheduled_time FROM task_schedule WHERE id = $1)"


async def test_task_summary_gives_runs_failures_and_elapsed_time_per_type(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    task = (await new_task(db, "h", "http", {"url": "http://127.0.0.1:9/"}, active=False)).id
    for i, (ms, status) in enumerate(((10.0, "succeeded"), (20.0, "failed"), (60.0, "succeeded"))):
        run = await db.fetchval(
            "INSERT INTO task_schedule (task_id, scheduled_time, status) "
            "VALUES ($1, now() - make_interval(mins => $2), $3::run_status) RETURNING id",
            task,
            i,
            status,
        )
        await db.execute(
            "INSERT INTO task_results (run_id, attempt, status, finished_at, duration_ms, scheduled_time) "
            f"VALUES ($1, 1, $2::run_status, now(), $3, {RUN_AT})",
            run,
            status,
            ms,
        )
    response = await client.get("/task-summary", headers=bearer("tasks:read"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["types"] == [
        {"type": "http", "runs": 3, "failures": 1, "mean_ms": 30.0, "p50_ms": 20.0, "p95_ms": 56.0}
    ]
    since = datetime.fromisoformat(body["since"])
    now = await db.fetchval("SELECT now()")
    assert abs((now - since) - timedelta(days=365)) < timedelta(days=1, minutes=1)


async def test_scheduled_tasks_summary_buckets_compute_and_instances(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    task = (await new_task(db, "s", "sleep", {"ms": 1}, estimated_ms=4_000, active=False)).id
    offsets = [30, 31, 32, 90, 2 * 3600]  # seconds from now
    times = [
        await db.fetchval(
            "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() + make_interval(secs => $2)) "
            "RETURNING scheduled_time",
            task,
            s,
        )
        for s in offsets
    ]
    response = await client.get("/scheduled-tasks-summary", headers=bearer("tasks:read"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["horizon_hours"], body["bucket_seconds"]) == (3.0, 60)
    assert (body["capacity_ms_per_instance"], body["buffer"]) == (10_000.0, 0.1)
    buckets = body["buckets"]
    assert len(buckets) in (180, 181)
    starts = [datetime.fromisoformat(b["start"]) for b in buckets]
    assert all(b - a == timedelta(seconds=60) for a, b in itertools.pairwise(starts))
    # Where each run should be, by the buckets' own starts.
    expected: dict[int, int] = {}
    for t in times:
        i = next(i for i, s in enumerate(starts) if s <= t < s + timedelta(seconds=60))
        expected[i] = expected.get(i, 0) + 1
    seen = {i: b["runs"] for i, b in enumerate(buckets) if b["runs"]}
    assert seen == expected
    for i, runs in expected.items():
        assert buckets[i]["required_ms"] == runs * 4000
        assert buckets[i]["required_instances"] == math.ceil(runs * 4000 / 9000)
        assert buckets[i]["projected_runs"] == 0
    assert body["total_runs"] == 5
    assert body["peak_instances"] == max(math.ceil(r * 4000 / 9000) for r in expected.values())


async def test_the_horizon_bucket_capacity_and_buffer_are_query_parameters(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    task = (await new_task(db, "s", "sleep", {"ms": 1}, estimated_ms=3_000, active=False)).id
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, now() + make_interval(secs => i) FROM generate_series(1, 10) i",
        task,
    )
    response = await client.get(
        "/scheduled-tasks-summary",
        params={"hours": 1, "bucket": 3600, "capacity_ms": 6000, "buffer": 0.5},
        headers=bearer("tasks:read"),
    )
    body = response.json()
    assert response.status_code == 200, body
    buckets = body["buckets"]
    assert sum(b["runs"] for b in buckets) == 10
    assert len(buckets) in (1, 2)  # the hour holding now, and the one holding the horizon (1 if now is on the hour)
    # Buckets are whole UTC hours: the ten runs share one unless the test runs in the last ten seconds of an hour.
    for b in buckets:
        assert b["required_ms"] == 3000 * b["runs"]
        assert b["required_instances"] == b["runs"]  # 3,000 ms a run over 6,000 * (1 - 0.5) usable ms an instance
    assert body["peak_instances"] == max(b["runs"] for b in buckets)
    # No task is spread over a window: the peak is the same before spreading.
    assert body["peak_runs"] == body["peak_runs_before_spreading"] == max(b["runs"] for b in buckets)


async def test_a_recurring_task_not_yet_materialized_is_projected(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/tasks",
        json={"name": "every-5", "type": "noop", "schedule": {"kind": "cron", "cron": "*/5 * * * *"}},
        headers=bearer(),
    )
    assert created.status_code == 201, created.text
    body = (await client.get("/scheduled-tasks-summary", headers=bearer("tasks:read"))).json()
    # No scheduler ran: every run of the next three hours is projected.
    assert body["total_runs"] in (36, 37)
    assert sum(b["projected_runs"] for b in body["buckets"]) == body["total_runs"]


async def test_bad_summary_parameters_are_422_naming_the_parameter(client: httpx.AsyncClient) -> None:
    for params, field in (
        ({"hours": 0}, "hours"),
        ({"hours": 49}, "hours"),
        ({"bucket": 0}, "bucket"),
        ({"bucket": "x"}, "bucket"),
        ({"buffer": 1}, "buffer"),
        ({"buffer": 0.999}, "buffer"),
        ({"capacity_ms": -1}, "capacity_ms"),
        ({"capacity_ms": 1e-300}, "capacity_ms"),
        ({"capacity_ms": "nan"}, "capacity_ms"),
        ({"hours": "inf"}, "hours"),
        ({"hours": 48, "bucket": 1}, "bucket"),  # 172,800 buckets
    ):
        response = await client.get("/scheduled-tasks-summary", params=params, headers=bearer("tasks:read"))
        assert response.status_code == 422, (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in response.json()["errors"]] == [field], params


async def test_summaries_need_a_token_with_read_scope(client: httpx.AsyncClient) -> None:
    for path in ("/task-summary", "/scheduled-tasks-summary"):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=bearer("tasks:write"))).status_code == 403


async def test_the_extremes_of_the_parameters_give_finite_counts(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    task = (await new_task(db, "s", "sleep", {"ms": 1}, estimated_ms=86_400_000, active=False)).id
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() + interval '1 minute')", task
    )
    response = await client.get(
        "/scheduled-tasks-summary",
        params={"hours": 48, "bucket": 3600, "capacity_ms": 1, "buffer": 0.99},
        headers=bearer("tasks:read"),
    )
    assert response.status_code == 200, response.text
    assert response.json()["peak_instances"] == 8_640_000_000  # 86,400,000 ms over 0.01 ms an instance
