"""Plain `def` handlers run in worker processes (taskmill/workerpool/): served by a real processor process that
imports tests/handlers/blocking.py, whose handlers leave marks in a file of the test's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import distributor.service
from taskmill.settings import Settings
from tests.handlers.blocking import alive, marks
from tests.helpers import new_task, role_process, wait_until
from tests.transports import BOTH

MODULE = "tests.handlers.blocking"
HANDLERS = 4


@pytest.fixture
async def processor(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[asyncio.subprocess.Process]:
    """`taskmill processor --import tests.handlers.blocking`, once it has registered its handlers; it looks for
    cancelled runs every 0.2 s."""

    async def registered() -> bool:
        found: int = await db.fetchval("SELECT count(*) FROM task_types")
        return found == HANDLERS

    args = ("processor", "--import", MODULE, "--concurrency", "4")
    async with role_process(
        settings, *args, ready=registered, what="the processor to register its handlers", TASKMILL_CANCEL_CHECK_S="0.2"
    ) as proc:
        yield proc


async def _until(db: asyncpg.Connection, settings: Settings, task_id: int, *statuses: str, timeout: float = 30) -> str:
    """Hands the task's run out (the distributor, until idle) until it is in one of `statuses`; that status."""
    found: str | None = None

    async def reached() -> bool:
        nonlocal found
        await distributor.service.run(settings, until_idle=True)
        found = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", task_id)
        return found in statuses

    await wait_until(reached, timeout=timeout, interval=0.2, what=f"the run of task {task_id} to be {statuses}")
    assert found is not None
    return found


@BOTH
async def test_a_def_handler_past_its_timeout_is_stopped_before_its_retry_starts(
    settings: Settings, db: asyncpg.Connection, processor: object, tmp_path: Path
) -> None:
    """Issue 22 item 4: timeout 1 s, a handler that sleeps 4 s between its start and end marks, one retry. The first
    attempt is stopped for real: its end mark is never written, and its process is gone when the retry starts."""
    path = tmp_path / "marks"
    task = await new_task(db, "nap", "blocking.nap", {"path": str(path), "seconds": 4}, timeout_seconds=1,
                          max_retries=1, retry_delay_seconds=0.1)  # fmt: skip
    assert await _until(db, settings, task.id, "dead") == "dead"
    attempts = await db.fetch("SELECT attempt, status::text, error FROM task_results ORDER BY attempt")
    assert [tuple(a) for a in attempts] == [(1, "failed", "timed out after 1 s"), (2, "dead", "timed out after 1 s")]
    first_start = float(str(marks(path)[0]["at"]))
    # Past the time the first attempt's end mark was due (its start + 4 s), and the second's.
    await asyncio.sleep(max(0.0, first_start + 6 - time.time()))
    found = marks(path)
    assert [(m["event"], m["attempt"]) for m in found] == [("start", 1), ("start", 2)]
    first, second = found
    assert first["pid"] != second["pid"]
    assert second["earlier_alive"] == []  # the first attempt's process was gone when the second started
    assert not alive(int(str(first["pid"]))) and not alive(int(str(second["pid"])))
