from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

import distributor.service
import processor.service
from taskmill.settings import Settings
from taskmill.topology import Names, declare
from tests.helpers import running, statuses, wait_until


@pytest.fixture
async def channel(settings: Settings) -> AsyncIterator[AbstractChannel]:
    conn = await aio_pika.connect(settings.amqp_url)
    ch = await conn.channel()
    await declare(ch, settings)
    yield ch
    await conn.close()


async def insert_runs(db: asyncpg.Connection, task_type: str, offsets_s: list[float]) -> list[int]:
    task_id = await db.fetchval(
        "INSERT INTO tasks (name, type, schedule_kind) VALUES ($1, $2, 'immediate') RETURNING id",
        f"task-{task_type}-{len(offsets_s)}",
        task_type,
    )
    rows = await db.fetch(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, now() + make_interval(secs => o) FROM unnest($2::float8[]) o RETURNING id",
        task_id,
        offsets_s,
    )
    return [r[0] for r in rows]


async def ready_messages(channel: AbstractChannel, queue: str) -> int:
    underlay = await channel.get_underlay_channel()
    return int((await underlay.queue_declare(queue, passive=True)).message_count or 0)


async def test_due_runs_are_published_and_future_runs_are_not(
    settings: Settings, db: asyncpg.Connection, channel: AbstractChannel
) -> None:
    due = await insert_runs(db, "noop", [-5, -1, 0])
    await insert_runs(db, "sleep", [60, 3600])
    await distributor.service.run(settings, until_idle=True)
    assert await statuses(db) == {"queued": 3, "scheduled": 2}
    queue = await channel.declare_queue(Names(settings.broker_prefix).work_queue, passive=True)
    seen = []
    for _ in range(3):
        message = await queue.get(timeout=5)
        assert message is not None
        body = json.loads(message.body)
        assert message.message_id == str(body["run_id"])
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert (body["v"], body["type"], body["attempt"]) == (1, "noop", 1)
        seen.append(body["run_id"])
        await message.ack()
    assert sorted(seen) == sorted(due)
    assert await ready_messages(channel, queue.name) == 0


async def test_a_run_the_broker_cannot_route_goes_back_to_scheduled(
    settings: Settings, db: asyncpg.Connection, channel: AbstractChannel
) -> None:
    # No queue is bound for this type: the broker returns the mandatory message and the publish fails.
    (unroutable,) = await insert_runs(db, "no-such-type", [-1])
    (routable,) = await insert_runs(db, "noop", [-1])
    await distributor.service.run(settings, until_idle=True)
    rows = {r[0]: r[1] for r in await db.fetch("SELECT id, status::text FROM task_schedule")}
    assert rows == {unroutable: "scheduled", routable: "queued"}
    audit = await db.fetch(
        "SELECT from_status::text, to_status::text FROM run_audit WHERE run_id = $1 ORDER BY at", unroutable
    )
    assert [tuple(a) for a in audit] == [(None, "scheduled"), ("scheduled", "queued"), ("queued", "scheduled")]
    assert await ready_messages(channel, Names(settings.broker_prefix).work_queue) == 1


async def test_a_run_is_published_its_lead_time_before_it_falls_due_not_sooner(
    settings: Settings, db: asyncpg.Connection, channel: AbstractChannel
) -> None:
    lead = settings.model_copy(update={"max_idle_s": 30, "dispatch_lead_s": 0.5})
    async with running(distributor.service.run, lead):
        (run_id,) = await insert_runs(db, "noop", [1.5])

        async def queued() -> bool:
            return bool(await db.fetchval("SELECT status = 'queued' FROM task_schedule WHERE id = $1", run_id))

        await wait_until(queued, 5, interval=0.01, what="the run to be queued")
        late_s = await db.fetchval(
            "SELECT extract(epoch FROM queued_at - scheduled_time) FROM task_schedule WHERE id = $1", run_id
        )
    assert -0.55 <= late_s < -0.1  # due in 1.5 s, lead 0.5 s: handed out about 0.5 s early, never sooner


async def test_a_new_due_run_wakes_an_idle_distributor(
    settings: Settings, db: asyncpg.Connection, channel: AbstractChannel
) -> None:
    async with running(distributor.service.run, settings.model_copy(update={"max_idle_s": 30})):
        await wait_until(lambda: _true(), 1)
        (run_id,) = await insert_runs(db, "noop", [0])

        async def queued() -> bool:
            return bool(await db.fetchval("SELECT status = 'queued' FROM task_schedule WHERE id = $1", run_id))

        await wait_until(queued, 2, interval=0.01, what="the NOTIFY to wake the distributor")


async def _true() -> bool:
    return True


async def test_a_queued_run_whose_lease_ran_out_is_published_again(
    settings: Settings, db: asyncpg.Connection, channel: AbstractChannel
) -> None:
    (run_id,) = await insert_runs(db, "noop", [-1])
    await db.execute(
        "UPDATE task_schedule SET status = 'queued', lease_until = now() - interval '1 s' WHERE id = $1", run_id
    )
    await distributor.service.run(settings, until_idle=True)
    assert await ready_messages(channel, Names(settings.broker_prefix).work_queue) == 1
    lease_left = await db.fetchval(
        "SELECT extract(epoch FROM lease_until - now()) FROM task_schedule WHERE id = $1", run_id
    )
    assert lease_left > settings.queued_lease_s - 2


async def test_a_run_lost_with_its_processor_runs_again_without_spending_retries_until_the_lost_limit(
    settings: Settings, db: asyncpg.Connection, channel: AbstractChannel
) -> None:
    again, last = await insert_runs(db, "noop", [-2, -1])  # the task asks for no retries (max_retries 0)
    await db.execute("UPDATE task_schedule SET status = 'queued'")
    lost_before = {again: 0, last: settings.lost_limit}
    for run_id, lost in lost_before.items():
        await db.execute(
            "UPDATE task_schedule SET status = 'running', attempt = 1 + $2, lost = $2, "
            "lease_until = now() - interval '1 s' WHERE id = $1",
            run_id,
            lost,
        )
    await distributor.service.run(settings, until_idle=True)
    rows = {r["id"]: r for r in await db.fetch("SELECT id, status::text, lost, error FROM task_schedule")}
    assert (rows[again]["status"], rows[again]["lost"]) == ("queued", 1)
    assert rows[again]["error"] == "processor lost during attempt 1"
    assert (rows[last]["status"], rows[last]["lost"]) == ("dead", settings.lost_limit + 1)
    assert "more than TASKMILL_LOST_LIMIT (3) allows" in rows[last]["error"]
    names = Names(settings.broker_prefix)
    queue = await channel.declare_queue(names.work_queue, passive=True)
    message = await queue.get(timeout=5)
    assert message is not None
    body = json.loads(message.body)
    # The next attempt, carrying the loss: the processor does not count it against max_retries.
    assert (body["run_id"], body["attempt"], body["lost"], body["max_retries"]) == (again, 2, 1, 0)
    assert await ready_messages(channel, names.dead_queue) == 1
    results = await db.fetch("SELECT run_id, attempt, status::text FROM task_results ORDER BY run_id")
    assert [tuple(r) for r in results] == [(again, 1, "failed"), (last, 4, "failed")]


@pytest.mark.timing
async def test_a_run_published_ahead_starts_at_its_time_not_before(
    settings: Settings, db: asyncpg.Connection, channel: AbstractChannel
) -> None:
    early = settings.model_copy(update={"max_idle_s": 30, "dispatch_lead_s": 1.0})
    async with running(distributor.service.run, early), running(processor.service.run, early):
        (run_id,) = await insert_runs(db, "noop", [1.5])

        async def succeeded() -> bool:
            return bool(await db.fetchval("SELECT status = 'succeeded' FROM task_schedule WHERE id = $1", run_id))

        await wait_until(succeeded, 5, interval=0.01, what="the run to succeed")
    row = await db.fetchrow(
        "SELECT extract(epoch FROM queued_at - scheduled_time)::float8 AS queued,"
        " extract(epoch FROM started_at - scheduled_time)::float8 AS started FROM task_schedule WHERE id = $1",
        run_id,
    )
    assert row is not None
    assert row["queued"] < -0.5  # handed out ahead of time
    assert 0 <= row["started"] < 0.5  # but started on time
