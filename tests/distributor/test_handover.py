"""Moving up: an installation on the PostgreSQL transport switched to RabbitMQ (AMQP_URL set, roles restarted) loses
nothing. Runs handed out under PostgreSQL are finished there or handed out again over RabbitMQ, each once."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

import distributor.service
import processor.service
from taskmill.settings import Settings
from taskmill.store import queue
from tests.helpers import new_task, running, statuses, wait_for_statuses, wait_until
from tests.transports import counts

# Fails its first attempt and succeeds after its retry.
SECOND_TIME = "if [ -e marker ]; then echo second; else touch marker; exit 1; fi"


@pytest.mark.parametrize("transport", ["postgres"])
async def test_switching_from_postgres_to_rabbitmq_finishes_every_run_once(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # Under the PostgreSQL transport: a retry waiting out its delay, messages no processor took yet, and a message
    # held by a processor that died (its lease runs out a second later).
    payload = {"argv": ["sh", "-c", SECOND_TIME], "cwd": str(tmp_path)}
    flaky = await new_task(db, "flaky", "command", payload, max_retries=1, retry_delay_seconds=2)
    async with running(processor.service.run, settings):
        await distributor.service.run(settings, until_idle=True)
        await wait_for_statuses(db, {"retrying": 1}, timeout=10)
    waiting = [await new_task(db, f"waiting-{i}", "noop") for i in range(20)]
    await distributor.service.run(settings, until_idle=True)
    [held] = await queue.claim(db, 1, "a-processor-that-died", lease_s=1)
    left = await db.fetch("SELECT id, leased_by, available_at > now() AS later FROM run_queue WHERE queue = 'work'")
    assert len(left) >= 3
    assert [r["id"] for r in left if r["leased_by"]] == [held.id]
    assert sum(1 for r in left if r["later"] and not r["leased_by"]) == 1  # the retry
    assert await statuses(db) == {"retrying": 1, "queued": 20}

    # AMQP_URL set, the roles restarted: every message is handed over, and every run runs once.
    moved = settings.model_copy(update={"transport": "amqp"})
    async with running(distributor.service.run, moved), running(processor.service.run, moved):
        await wait_for_statuses(db, {"succeeded": 21}, timeout=30)

        async def emptied() -> bool:
            left: int = await db.fetchval("SELECT count(*) FROM run_queue")
            return left == 0

        await wait_until(emptied, timeout=10, what="the PostgreSQL transport's queue to empty")

    starts = {
        r["task_id"]: r["n"]
        for r in await db.fetch(
            "SELECT s.task_id, count(*) AS n FROM run_audit a JOIN task_schedule s ON s.id = a.run_id "
            "WHERE a.to_status = 'running' GROUP BY 1"
        )
    }
    assert starts == {flaky.id: 2} | {t.id: 1 for t in waiting}
    assert await db.fetchval("SELECT attempt FROM task_schedule WHERE task_id = $1", flaky.id) == 2
    assert await counts(moved) == {"work": 0, "dead": 0}
