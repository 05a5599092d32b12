"""Failed attempts: retried after their delay with backoff, then dead-lettered when the retries are spent, over each
transport."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import aio_pika
import asyncpg

import distributor.service
import processor.service
from taskmill.settings import Settings
from taskmill.topology import Names
from tests.helpers import new_task, running, wait_for_statuses
from tests.transports import BOTH, take_dead_letters

# Every test here runs over RabbitMQ and over PostgreSQL alone.
pytestmark = BOTH

FAIL = {"argv": ["sh", "-c", "echo nope >&2; exit 7"]}


async def run_pipeline(settings: Settings, db: asyncpg.Connection, expected: dict[str, int]) -> None:
    """Publishes every due run and lets a processor work until the runs reach the `expected` statuses.

    The processor is stopped (drained) on the way out, so whatever it publishes after recording is on the broker.
    """
    async with running(processor.service.run, settings):
        await distributor.service.run(settings, until_idle=True)
        await wait_for_statuses(db, expected, timeout=10)


async def attempts(db: asyncpg.Connection, task_id: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        """SELECT r.attempt, r.status::text, r.error, r.started_at, r.finished_at
           FROM task_results r JOIN task_schedule s ON s.id = r.run_id WHERE s.task_id = $1 ORDER BY r.attempt""",
        task_id,
    )
    return rows


def waits(rows: list[asyncpg.Record]) -> list[float]:
    """Seconds from the end of each attempt to the start of the next."""
    ends: list[datetime] = [r["finished_at"] for r in rows[:-1]]
    starts: list[datetime] = [r["started_at"] for r in rows[1:]]
    return [(start - end).total_seconds() for end, start in zip(ends, starts, strict=True)]


async def test_a_failing_task_runs_every_retry_after_its_delay_then_is_dead_lettered(
    settings: Settings, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "flaky", "command", FAIL, max_retries=2, retry_delay_seconds=0.3)
    await run_pipeline(settings, db, {"dead": 1})
    run = await db.fetchrow("SELECT id, attempt, error, finished_at FROM task_schedule WHERE task_id = $1", task.id)
    assert run is not None
    assert (run["attempt"], run["error"]) == (3, "exit code 7")
    assert run["finished_at"] is not None

    rows = await attempts(db, task.id)
    assert [(r["attempt"], r["status"], r["error"]) for r in rows] == [
        (1, "failed", "exit code 7"),
        (2, "failed", "exit code 7"),
        (3, "dead", "exit code 7"),
    ]
    assert all(wait >= 0.3 for wait in waits(rows)), waits(rows)

    audit = await db.fetch(
        "SELECT from_status::text, to_status::text, attempt FROM run_audit WHERE run_id = $1 ORDER BY at", run["id"]
    )
    assert [tuple(a) for a in audit] == [
        (None, "scheduled", 0),
        ("scheduled", "queued", 0),
        ("queued", "running", 1),
        ("running", "retrying", 1),
        ("retrying", "running", 2),
        ("running", "retrying", 2),
        ("retrying", "running", 3),
        ("running", "dead", 3),
    ]

    [letter] = await take_dead_letters(settings)
    assert letter.run_id == str(run["id"])
    assert letter.reason == "exit code 7"
    assert b'"attempt":3' in letter.body


async def test_backoff_multiplies_the_wait_before_each_retry(settings: Settings, db: asyncpg.Connection) -> None:
    task = await new_task(db, "flaky", "command", FAIL, max_retries=2, retry_delay_seconds=0.2, backoff=2)
    await run_pipeline(settings, db, {"dead": 1})
    first, second = waits(await attempts(db, task.id))
    # Each retry waits its delay, and not much more (a processor asleep must not sleep past a retry's time).
    assert 0.2 <= first < 0.2 + 0.6, (first, second)
    assert 0.4 <= second < 0.4 + 0.6, (first, second)
    if settings.transport_name == "postgres":
        return  # the queue held each retry as a row, ready after its delay: the waits above are what shows it
    # The broker held the two retries in a delay queue each: 200 ms, then 400 ms.
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        names = Names(settings.broker_prefix)
        for delay_ms in (200, 400):
            await channel.declare_queue(names.delay_queue(delay_ms, "command"), passive=True)


async def test_a_failing_task_without_retries_fails_and_is_not_dead_lettered(
    settings: Settings, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "once", "command", FAIL, max_retries=0)
    await run_pipeline(settings, db, {"failed": 1})
    assert [(r["attempt"], r["status"]) for r in await attempts(db, task.id)] == [(1, "failed")]
    assert await take_dead_letters(settings) == []


async def test_a_task_that_fails_once_then_succeeds_ends_succeeded_at_attempt_two(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    script = "if [ -e marker ]; then echo second try; else touch marker; exit 1; fi"
    payload = {"argv": ["sh", "-c", script], "cwd": str(tmp_path)}
    task = await new_task(db, "second time lucky", "command", payload, max_retries=3, retry_delay_seconds=0.1)
    await run_pipeline(settings, db, {"succeeded": 1})
    assert await db.fetchval("SELECT attempt FROM task_schedule WHERE task_id = $1", task.id) == 2
    rows = await attempts(db, task.id)
    assert [(r["attempt"], r["status"], r["error"]) for r in rows] == [
        (1, "failed", "exit code 1"),
        (2, "succeeded", None),
    ]
    assert await take_dead_letters(settings) == []
