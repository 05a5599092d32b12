"""At-least-once delivery, exactly-once start: repeated, concurrent, stale and unreadable messages.

The messages repeated here are the distributor's own (the `copies` fixture): over RabbitMQ a queue of the test's,
bound to the runs exchange next to the work queue, keeps a copy of everything published there; over PostgreSQL the
messages are read from the queue's rows before a processor takes them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

import processor.service
from taskmill.messages import RunMessage
from taskmill.models import Schedule
from taskmill.settings import Settings
from taskmill.states import ScheduleKind
from taskmill.store.runs import Start, StartRequest, start_runs
from tests.helpers import new_task, running, statuses, wait_for_statuses, wait_until
from tests.processor.brokers import Broker, QueueRows, distribute, process
from tests.transports import BOTH, counts, publish, take_dead_letters, waiting_retries

# Every test here runs over RabbitMQ and over PostgreSQL alone.
pytestmark = BOTH

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
    settings: Settings, db: asyncpg.Connection, copies: Broker | QueueRows, tmp_path: Path
) -> None:
    task = await new_task(db, "append", "command", {"argv": APPEND, "cwd": str(tmp_path)})
    await distribute(settings)
    body = await copies.take_copy()
    await process(settings)
    assert await statuses(db) == {"succeeded": 1}
    assert lines(tmp_path) == ["ran"]
    before = await history(db)
    assert len(before[0]) == 1

    run_id = RunMessage.model_validate_json(body).run_id
    await publish(settings, body, "command", run_id)
    assert await counts(settings) == {"work": 1, "dead": 0}
    await process(settings)

    assert await counts(settings) == {"work": 0, "dead": 0}
    assert lines(tmp_path) == ["ran"]
    assert await history(db) == before
    assert await db.fetchval("SELECT attempt FROM task_schedule WHERE task_id = $1", task.id) == 1


async def test_two_copies_of_a_message_delivered_at_once_run_once(
    settings: Settings, db: asyncpg.Connection, copies: Broker | QueueRows, tmp_path: Path
) -> None:
    payload = {"argv": ["sh", "-c", "echo ran >> runs.log; sleep 0.2"], "cwd": str(tmp_path)}
    await new_task(db, "append", "command", payload)
    await distribute(settings)
    await publish(settings, await copies.take_copy(), "command")
    assert (await counts(settings))["work"] == 2  # both wait for the processor's first fetch
    await process(settings)

    assert await statuses(db) == {"succeeded": 1}
    assert lines(tmp_path) == ["ran"]
    results, audit = await history(db)
    assert [(attempt, status) for _, attempt, status, _, _ in results] == [(1, "succeeded")]
    assert [(to, attempt) for _, _, to, attempt in audit if to == "running"] == [("running", 1)]
    assert (await counts(settings))["dead"] == 0


async def test_a_message_for_a_stale_attempt_is_dropped(
    settings: Settings, db: asyncpg.Connection, copies: Broker | QueueRows, tmp_path: Path
) -> None:
    # Attempt 1 fails and its retry waits a long time: the run sits in `retrying`, startable, at attempt 1.
    payload = {"argv": ["sh", "-c", "echo ran >> runs.log; exit 1"], "cwd": str(tmp_path)}
    task = await new_task(db, "append", "command", payload, max_retries=1, retry_delay_seconds=30)
    await distribute(settings)
    first = await copies.take_copy()
    await process(settings)
    assert await statuses(db) == {"retrying": 1}
    before = await history(db)

    # The first attempt's message again: the run is startable, but not by a message for attempt 1.
    assert RunMessage.model_validate_json(first).attempt == 1
    await publish(settings, first, "command")
    await process(settings)

    assert await statuses(db) == {"retrying": 1}
    assert await db.fetchval("SELECT attempt FROM task_schedule WHERE task_id = $1", task.id) == 1
    assert lines(tmp_path) == ["ran"]
    assert await history(db) == before
    assert await counts(settings) == {"work": 0, "dead": 0}
    # The real retry is untouched, still waiting out its delay.
    assert await waiting_retries(settings, "command", 30_000) == 1


@pytest.mark.parametrize("body", [b"not json at all", b'{"v": 1, "run_id": "one"}'], ids=["not-json", "wrong-shape"])
async def test_an_unreadable_message_is_dead_lettered_and_consuming_goes_on(
    settings: Settings, db: asyncpg.Connection, body: bytes
) -> None:
    async with running(processor.service.run, settings):
        await publish(settings, body, "noop")

        async def dead_lettered() -> bool:
            return (await counts(settings))["dead"] == 1

        await wait_until(dead_lettered, timeout=5, what="the unreadable message in the dead-letter queue")
        await new_task(db, "after the poison", "noop", {"still": "alive"})
        await distribute(settings)
        await wait_for_statuses(db, {"succeeded": 1}, timeout=5)

    assert (await counts(settings))["work"] == 0
    [dead] = await take_dead_letters(settings)
    assert dead.body == body
    assert dead.reason.startswith("unreadable run message")
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
