"""At-least-once delivery, exactly-once start: repeated, concurrent, stale and unreadable messages.

The messages repeated here are the distributor's own: a queue of the test's, bound to the runs exchange next to the
work queue, keeps a copy of everything published there.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import asyncpg
import pytest

import processor.service
from taskmill.messages import RunMessage
from taskmill.models import Schedule
from taskmill.settings import Settings
from taskmill.states import ScheduleKind
from taskmill.store.runs import Start, StartRequest, start_runs
from tests.helpers import new_task, running, statuses, wait_for_statuses, wait_until
from tests.processor.brokers import Broker, distribute, process

# Appends one line to runs.log in its cwd each time it runs.
APPEND = ["sh", "-c", "echo ran >> runs.log"]


async def history(db: asyncpg.Connection) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Every attempt recorded and every status change, to compare before and after a repeated message."""
    results = await db.fetch("SELECT run_id, attempt, status::text, result, error FROM task_results ORDER BY 1, 2")
    audit = await db.fetch(
        "SELECT run_id, from_status::text, to_status::text, attempt FROM run_audit ORDER BY run_id, at"
    )
    return [tuple(r) for r in results], [tuple(a) for a in audit]


def lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "runs.log").read_text().splitlines()


async def test_a_repeated_message_of_a_finished_run_is_acked_without_running_again(
    settings: Settings, db: asyncpg.Connection, broker: Broker, tmp_path: Path
) -> None:
    task = await new_task(db, "append", "command", {"argv": APPEND, "cwd": str(tmp_path)})
    await distribute(settings)
    body = await broker.take_copy()
    await process(settings)
    assert await statuses(db) == {"succeeded": 1}
    assert lines(tmp_path) == ["ran"]
    before = await history(db)
    assert len(before[0]) == 1

    run_id = RunMessage.model_validate_json(body).run_id
    await broker.publish(body, "command", run_id)
    assert await broker.count(broker.topology.names.work_queue) == 1
    await process(settings)

    assert await broker.count(broker.topology.names.work_queue) == 0
    assert await broker.count(broker.topology.names.dead_queue) == 0
    assert lines(tmp_path) == ["ran"]
    assert await history(db) == before
    assert await db.fetchval("SELECT attempt FROM task_schedule WHERE task_id = $1", task.id) == 1


async def test_two_copies_of_a_message_delivered_at_once_run_once(
    settings: Settings, db: asyncpg.Connection, broker: Broker, tmp_path: Path
) -> None:
    payload = {"argv": ["sh", "-c", "echo ran >> runs.log; sleep 0.2"], "cwd": str(tmp_path)}
    await new_task(db, "append", "command", payload)
    await distribute(settings)
    await broker.publish(await broker.take_copy(), "command")
    assert await broker.count(broker.topology.names.work_queue) == 2  # both wait for the processor's first fetch
    await process(settings)

    assert await statuses(db) == {"succeeded": 1}
    assert lines(tmp_path) == ["ran"]
    results, audit = await history(db)
    assert [(attempt, status) for _, attempt, status, _, _ in results] == [(1, "succeeded")]
    assert [(to, attempt) for _, _, to, attempt in audit if to == "running"] == [("running", 1)]
    assert await broker.count(broker.topology.names.dead_queue) == 0


async def test_a_message_for_a_stale_attempt_is_dropped(
    settings: Settings, db: asyncpg.Connection, broker: Broker, tmp_path: Path
) -> None:
    # Attempt 1 fails and its retry waits a long time: the run sits in `retrying`, startable, at attempt 1.
    payload = {"argv": ["sh", "-c", "echo ran >> runs.log; exit 1"], "cwd": str(tmp_path)}
    task = await new_task(db, "append", "command", payload, max_retries=1, retry_delay_seconds=30)
    await distribute(settings)
    first = await broker.take_copy()
    await process(settings)
    assert await statuses(db) == {"retrying": 1}
    before = await history(db)

    # The first attempt's message again: the run is startable, but not by a message for attempt 1.
    assert RunMessage.model_validate_json(first).attempt == 1
    await broker.publish(first, "command")
    await process(settings)

    assert await statuses(db) == {"retrying": 1}
    assert await db.fetchval("SELECT attempt FROM task_schedule WHERE task_id = $1", task.id) == 1
    assert lines(tmp_path) == ["ran"]
    assert await history(db) == before
    assert await broker.count(broker.topology.names.work_queue) == 0
    assert await broker.count(broker.topology.names.dead_queue) == 0
    # The real retry is untouched, still waiting in its delay queue.
    assert await broker.count(broker.topology.names.delay_queue(30_000, "command")) == 1


@pytest.mark.parametrize("body", [b"not json at all", b'{"v": 1, "run_id": "one"}'], ids=["not-json", "wrong-shape"])
async def test_an_unreadable_message_is_dead_lettered_and_consuming_goes_on(
    settings: Settings, db: asyncpg.Connection, broker: Broker, body: bytes
) -> None:
    dead_queue = broker.topology.names.dead_queue
    async with running(processor.service.run, settings):
        await broker.publish(body, "noop")

        async def dead_lettered() -> bool:
            return await broker.count(dead_queue) == 1

        await wait_until(dead_lettered, timeout=5, what="the unreadable message in the dead-letter queue")
        await new_task(db, "after the poison", "noop", {"still": "alive"})
        await distribute(settings)
        await wait_for_statuses(db, {"succeeded": 1}, timeout=5)

    assert await broker.count(broker.topology.names.work_queue) == 0
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        dead = await (await channel.declare_queue(dead_queue, passive=True)).get(no_ack=True)
        assert dead.body == body
        assert str(dead.headers["x-taskmill-reason"]).startswith("unreadable run message")
    assert await db.fetchval("SELECT result FROM task_results") == {"still": "alive"}


async def test_a_run_not_yet_due_by_the_database_clock_is_early_not_lost(
    settings: Settings, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "soon", "noop", schedule=Schedule(kind=ScheduleKind.INTERVAL, every_seconds=3600))
    row = await db.fetchrow(
        "INSERT INTO task_schedule (task_id, scheduled_time, status) VALUES ($1, now() + interval '300 ms', "
        "'scheduled') RETURNING id, scheduled_time",
        task.id,
    )
    assert row is not None
    run_id, at = row
    request = StartRequest(run_id, 1, 30.0, at)
    assert await start_runs(db, "w", [request]) == [Start.EARLY]
    await asyncio.sleep(0.35)
    assert await start_runs(db, "w", [request, request]) == [Start.WON, Start.LOST]
    assert await start_runs(db, "w", [request]) == [Start.LOST]
