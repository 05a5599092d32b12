"""Priorities: a run of priority 9 passes a backlog of 10,000 runs of priority 0 already handed to the transport,
on RabbitMQ (its urgent lane) and on the PostgreSQL transport (its claim's order), with real role processes; and
the order of the PostgreSQL transport's claim itself."""

from __future__ import annotations

import json

import asyncpg
import httpx

from taskmill.messages import read_runs
from taskmill.models import Schedule
from taskmill.spawn import Parent, SpawnSpec, spawn
from taskmill.states import ScheduleKind
from taskmill.store import queue
from taskmill.store.runs import claim_due
from tests.api.conftest import api_settings, client  # noqa: F401 (fixtures)
from tests.faults.harness import Stack
from tests.helpers import new_task, wait_until
from tests.transports import BOTH
from tests.workflows.conftest import WRITE

BACKLOG = 10_000
SLOTS = 4


@BOTH
async def test_an_urgent_run_passes_a_backlog_of_ten_thousand(stack: Stack, db: asyncpg.Connection) -> None:
    await stack.start(distributor=1)
    await stack.add("processor", "--concurrency", str(SLOTS))
    # 20 ms each on four slots: 200 runs a second, so the backlog would take 50 s to drain.
    hourly = Schedule(kind=ScheduleKind.INTERVAL, every_seconds=3600)
    backlog = await new_task(db, "backlog", "sleep", {"ms": 20}, schedule=hourly)
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, now() - interval '1 second' + k * interval '1 microsecond' FROM generate_series(1, $2) k",
        backlog.id,
        BACKLOG,
    )

    async def backlog_handed_out_and_flowing() -> bool:
        row = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'scheduled') AS waiting, "
            "count(*) FILTER (WHERE status = 'succeeded') AS done FROM task_schedule WHERE task_id = $1",
            backlog.id,
        )
        assert row is not None
        return bool(row["waiting"] == 0 and row["done"] >= 50)

    await wait_until(backlog_handed_out_and_flowing, timeout=60, interval=0.1, what="the backlog to be handed out")
    urgent = await new_task(db, "urgent", "sleep", {"ms": 1}, priority=9)

    async def urgent_done() -> bool:
        status = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", urgent.id)
        return bool(status == "succeeded")

    await wait_until(urgent_done, timeout=30, interval=0.05, what="the urgent run to succeed")
    run = await db.fetchrow("SELECT queued_at, started_at FROM task_schedule WHERE task_id = $1", urgent.id)
    assert run is not None
    passed = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE started_at > $2 AND started_at < $3) AS started_meanwhile, "
        "count(*) FILTER (WHERE started_at IS NULL OR started_at > $3) AS still_waiting "
        "FROM task_schedule WHERE task_id = $1",
        backlog.id,
        run["queued_at"],
        run["started_at"],
    )
    assert passed is not None
    print(f"urgent run passed the backlog: {dict(passed)}")
    # It waited for a slot to free, not for the thousands of runs ahead of it.
    assert passed["started_meanwhile"] <= 3 * SLOTS, dict(passed)
    assert passed["still_waiting"] > BACKLOG // 2, dict(passed)


async def test_the_postgres_claim_hands_out_the_most_urgent_ready_message_first(pool: asyncpg.Pool) -> None:
    messages = [queue.Message("noop", f"m{i}".encode(), i, priority=p) for i, p in enumerate([0, 0, 5, 9, 5, 0], 1)]
    # A priority-9 retry still waiting out its delay is not handed out before its time.
    messages.append(queue.Message("noop", b"later", 7, delay_s=60, priority=9))
    await queue.enqueue(pool, messages)
    first = await queue.claim(pool, 3, "w1", 30)
    rest = await queue.claim(pool, 10, "w1", 30)
    assert [m.body for m in first] == [b"m4", b"m3", b"m5"]
    assert [m.body for m in rest] == [b"m1", b"m2", b"m6"]
    wait_s = await queue.next_ready_in(pool)
    assert wait_s is not None and 20 < wait_s <= 30  # the leases' end comes before the retry's delay


async def test_priority_is_a_task_field_checked_by_the_api_and_carried_by_the_run_message(
    pool: asyncpg.Pool,
    client: httpx.AsyncClient,  # noqa: F811
) -> None:
    body = {"name": "soon", "type": "noop", "priority": 10}
    refused = await client.post("/tasks", json=body, headers=WRITE)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "priority", "reason": "Input should be less than or equal to 9"}]
    created = await client.post("/tasks", json={**body, "priority": 3}, headers=WRITE)
    assert created.status_code == 201, created.text
    assert created.json()["priority"] == 3
    step = {"name": "s", "type": "noop", "priority": 6}
    flow = await client.post("/workflows", json={"name": "w", "tasks": [step]}, headers=WRITE)
    assert flow.status_code == 201, flow.text
    assert flow.json()["tasks"][0]["priority"] == 6
    invoked = await client.post("/workflows/w/invoke", headers=WRITE)
    assert invoked.status_code in (200, 201), invoked.text
    claimed = await claim_due(pool, 100, 300, 0)
    assert sorted(o.priority for o in claimed) == [3, 6]
    for outbound in claimed:
        (message,) = read_runs(outbound.body)
        assert message.priority == outbound.priority == json.loads(outbound.body)["priority"]


async def test_spawned_children_take_their_parents_priority_unless_they_name_one(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    parent_task = await new_task(db, "urgent-parent", "noop", priority=8)
    parent = await db.fetchrow("SELECT id, scheduled_time FROM task_schedule WHERE task_id = $1", parent_task.id)
    assert parent is not None
    ref = Parent(parent["id"], parent_task.id, parent["scheduled_time"], 10, 1000)
    async with pool.acquire() as conn:
        children = await spawn(conn, ref, [SpawnSpec(type="noop"), SpawnSpec(type="noop", priority=2)])
    priorities = await db.fetch(
        "SELECT t.priority FROM task_schedule s JOIN tasks t ON t.id = s.task_id WHERE s.id = ANY($1::bigint[]) "
        "ORDER BY s.id",
        [c.run_id for c in children],
    )
    assert [r["priority"] for r in priorities] == [8, 2]
