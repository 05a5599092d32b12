"""Every role serves /metrics on its own port (`--metrics-port`), scraped before and after a small workload, with the
queue-pressure gauges kept current by the distributor and the capacity role on their own: no API request needed."""

from __future__ import annotations

import asyncpg
import httpx

from taskmill.models import Schedule
from taskmill.states import ScheduleKind
from tests.faults.harness import Stack
from tests.helpers import free_port, new_task, wait_until
from tests.observe.scrape import scrape, value

FAST = {"TASKMILL_PRESSURE_INTERVAL_S": "0.2"}


async def _port(stack: Stack, role: str, *args: str, **env: str) -> int:
    """Starts a replica of `role` serving its metrics on a port of its own, and returns the port once it answers."""
    port = free_port()
    await stack.add(role, *args, "--metrics-port", str(port), **(FAST | env))

    async def serving() -> bool:
        try:
            await scrape(port)
        except httpx.HTTPError:
            return False
        return True

    await wait_until(serving, timeout=15, interval=0.1, what=f"{role} to serve its metrics")
    return port


async def test_the_capacity_role_and_the_distributor_keep_the_pressure_gauges_current(
    stack: Stack, db: asyncpg.Connection
) -> None:
    capacity = await _port(stack, "capacity")
    task = await new_task(db, "backlog", schedule=Schedule(kind=ScheduleKind.INTERVAL, every_seconds=3600))
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, now() - interval '30 seconds' + k * interval '1 millisecond' FROM generate_series(1, 40) k",
        task.id,
    )

    async def backlog_seen() -> bool:
        samples = await scrape(capacity)
        return (
            value(samples, "taskmill_due_backlog_runs") == 40
            and value(samples, "taskmill_oldest_due_run_age_seconds") >= 29
        )

    await wait_until(backlog_seen, timeout=10, interval=0.2, what="the capacity role to see the backlog of 40")
    distributor = await _port(stack, "distributor")  # no processor: what it publishes waits in the work queue

    async def published_and_waiting() -> bool:
        samples = await scrape(distributor)
        return (
            value(samples, "taskmill_runs_published_total") == 40
            and value(samples, "taskmill_queue_depth", queue="work") >= 1
            and value(samples, "taskmill_due_backlog_runs") == 0
        )

    await wait_until(published_and_waiting, timeout=15, interval=0.2, what="the distributor's gauges to follow")
    samples = await scrape(capacity)
    await wait_until(
        lambda: _gauge_is(capacity, "taskmill_due_backlog_runs", 0), timeout=10, what="the capacity role to follow"
    )
    assert value(samples, "taskmill_required_instances", window="now") >= 0
    assert value(samples, "taskmill_role_info", role="capacity") == 1


async def _gauge_is(port: int, name: str, wanted: float) -> bool:
    return value(await scrape(port), name) == wanted


async def test_each_role_counts_its_own_work_before_and_after_a_workload(stack: Stack, db: asyncpg.Connection) -> None:
    await stack.start(api=True)
    ports = {
        "scheduler": await _port(stack, "scheduler"),
        "distributor": await _port(stack, "distributor"),
        "processor": await _port(stack, "processor"),
    }
    before = {role: await scrape(port) for role, port in ports.items()}
    async with stack.api() as api:
        for i in range(5):
            made = await api.post("/tasks", json={"name": f"now-{i}", "type": "noop"})
            assert made.status_code == 201, made.text
        cron = await api.post("/tasks", json={"name": "minutely", "type": "noop",
                                              "schedule": {"kind": "cron", "cron": "* * * * *"}})  # fmt: skip
        assert cron.status_code == 201, cron.text

    async def five_succeeded() -> bool:
        n: int = await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'succeeded'")
        return n >= 5

    await wait_until(five_succeeded, timeout=20, what="the five runs to succeed")

    async def counted() -> bool:
        processor = await scrape(ports["processor"])
        return value(processor, "taskmill_runs_finished_total", type="noop", outcome="succeeded") >= 5

    await wait_until(counted, timeout=10, what="the processor to count the five runs")
    after = {role: await scrape(port) for role, port in ports.items()}
    processor, distributor, scheduler = after["processor"], after["distributor"], after["scheduler"]
    finished = ("taskmill_runs_finished_total", {"type": "noop", "outcome": "succeeded"})
    assert value(before["processor"], finished[0], **finished[1]) == 0
    # Every outcome of every type it serves is a series from the start, at 0: increase() sees the first dead run.
    assert (finished[0], frozenset({"type": "http", "outcome": "dead"}.items())) in before["processor"]
    assert value(processor, "taskmill_processor_slots") == stack.settings.concurrency
    assert value(processor, "taskmill_processor_slots_busy") == 0  # all done
    assert value(processor, "taskmill_run_duration_seconds_count", type="noop") >= 5
    assert value(processor, "taskmill_start_lateness_seconds_count") >= 5
    assert value(processor, "taskmill_start_lateness_seconds_bucket", le="+Inf") >= 5
    assert (
        value(distributor, "taskmill_runs_published_total")
        - value(before["distributor"], "taskmill_runs_published_total")
        >= 5
    )
    assert value(distributor, "taskmill_processors_live") == 1
    assert value(scheduler, "taskmill_runs_materialized_total") > value(
        before["scheduler"], "taskmill_runs_materialized_total"
    )
    assert ("taskmill_scheduler_lag_seconds", frozenset()) in scheduler
    assert value(scheduler, "taskmill_scheduler_lag_seconds") == 0  # caught up with the new cron task
    for role, samples in after.items():
        assert value(samples, "taskmill_role_info", role=role) == 1


async def test_the_api_counts_requests_by_route_template_and_status(stack: Stack) -> None:
    port = free_port()
    await stack.start(api=True, TASKMILL_METRICS_PORT=str(port))
    async with stack.api() as api:
        for _ in range(3):
            assert (await api.post("/tasks", json={"name": "x" * 300, "type": "noop"})).status_code == 422
        assert (await api.get("/tasks/123456")).status_code == 404
        assert (await api.get("/tasks/654321")).status_code == 404
    samples = await scrape(port)
    assert value(samples, "taskmill_http_requests_total", method="POST", route="/tasks", status="422") == 3
    # Ids in paths do not make series of their own.
    assert value(samples, "taskmill_http_requests_total", method="GET", route="/tasks/{task_id}", status="404") == 2
    assert value(samples, "taskmill_http_request_duration_seconds_count", method="POST", route="/tasks") == 3
