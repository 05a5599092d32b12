"""Plain `def` handlers run in worker processes (taskmill/workerpool/): served by a real processor process that
imports tests/handlers/blocking.py, whose handlers leave marks in a file of the test's."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import distributor.service
from taskmill.settings import Settings
from tests.faults import procs
from tests.handlers.blocking import alive, marks
from tests.helpers import new_task, role_process, wait_until
from tests.transports import BOTH

MODULE = "tests.handlers.blocking"
HANDLERS = 6


# In the processor's environment, so every process it starts (forkserver, workers, their subprocesses) is found.
MARK = "TASKMILL_TEST_PROCESSOR"


@pytest.fixture
async def processor(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[asyncio.subprocess.Process]:
    """`taskmill processor --import tests.handlers.blocking`, once it has registered its handlers; it looks for
    cancelled runs every 0.2 s, and its environment marks it (and what it starts) with its own MARK."""

    async def registered() -> bool:
        found: int = await db.fetchval("SELECT count(*) FROM task_types")
        return found == HANDLERS

    args = ("processor", "--import", MODULE, "--concurrency", "4")
    async with role_process(
        settings, *args, ready=registered, what="the processor to register its handlers", TASKMILL_CANCEL_CHECK_S="0.2",
        fork=False,  # exec'd: its family is found by the MARK in /proc/<pid>/environ, which shows an exec's
        **{MARK: str(uuid.uuid4())},
    ) as proc:  # fmt: skip
        yield proc


def _family(proc: asyncio.subprocess.Process) -> list[int]:
    """The live processes of the processor's: itself, its forkserver, the workers and what their handlers started."""
    return procs.marked(MARK, procs.environ(proc.pid)[MARK]) if procs.alive(proc.pid) else []


def _forkserver(proc: asyncio.subprocess.Process) -> int:
    """The processor's forkserver (its workers, forked from it, show the same command line)."""
    (found,) = [
        pid for pid in _family(proc) if procs.parent(pid) == proc.pid and "workerpool.forker" in procs.cmdline(pid)
    ]
    return found


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


async def _result(db: asyncpg.Connection, task_id: int) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT s.id, s.status::text, s.error, r.result FROM task_schedule s JOIN task_results r ON r.run_id = s.id "
        "WHERE s.task_id = $1 ORDER BY r.attempt DESC LIMIT 1",
        task_id,
    )
    assert row is not None
    return row


async def _stopped(proc: asyncio.subprocess.Process) -> str:
    """Stops the processor (SIGTERM: it finishes what runs) and returns what it logged."""
    proc.terminate()
    assert proc.stderr is not None
    logged = await asyncio.wait_for(proc.stderr.read(), 30)
    await asyncio.wait_for(proc.wait(), 30)
    return logged.decode()


@BOTH
async def test_a_def_handler_gets_its_payload_model_and_returns_its_result_log_and_exception_across_the_process(
    settings: Settings, db: asyncpg.Connection, processor: asyncio.subprocess.Process
) -> None:
    ok = await new_task(db, "ok", "blocking.receipt", {"customer_id": 7, "lines": ["tea"]})
    failing = await new_task(db, "failing", "blocking.receipt", {"customer_id": 9, "fail": True})
    assert await _until(db, settings, ok.id, "succeeded") == "succeeded"
    assert await _until(db, settings, failing.id, "failed") == "failed"
    run = await _result(db, ok.id)
    scheduled = await db.fetchval("SELECT scheduled_time FROM task_schedule WHERE id = $1", run["id"])
    # A pydantic model back as its fields; wait_for_children() crossed over too (no children: it ended at once).
    assert run["result"] == {
        "result": {"customer_id": 7, "lines": ["tea", scheduled.isoformat()]},
        "output": f"INFO receipt of customer 7, attempt 1, run {run['id']}\n",
    }
    failed = await _result(db, failing.id)
    assert failed["error"] == "ValueError: customer 9 has no address"
    output = failed["result"]["output"]
    assert output.startswith(
        f"INFO receipt of customer 9, attempt 1, run {failed['id']}\nWARNING about to fail\n"
        "Traceback (most recent call last):\n"
    )
    assert 'tests/handlers/blocking.py", line' in output
    assert output.endswith("ValueError: customer 9 has no address\n")
    logged = await _stopped(processor)
    # ctx.log lines in the processor's log, and the logging module's of the worker, each with the run's id.
    assert f"receipt of customer 7, attempt 1, run {run['id']} [run {run['id']} task {ok.id}]" in logged
    assert f"a line of the logging module, run {run['id']} [run {run['id']} task {ok.id}]" in logged


@pytest.mark.parametrize("transport", ["postgres"])
async def test_what_a_def_handler_must_not_do_fails_its_run_clearly_and_the_next_run_gets_a_new_worker(
    settings: Settings, db: asyncpg.Connection, processor: object
) -> None:
    expected = {
        "conn": "RuntimeError: ctx.conn.fetchval: a plain def handler has no database connection (it runs in a worker "
        "process); make the handler `async def` to use ctx.conn",
        "result": "its result cannot be stored as JSON: ValueError: Circular reference detected",
        "sys_exit": "SystemExit: 4",
        "exit": "the handler's worker process died: exit code 3",
        "segfault": "the handler's worker process died: killed by SIGSEGV",
    }
    for what, error in expected.items():
        task = await new_task(db, f"misuse-{what}", "blocking.misuse", {"what": what})
        assert await _until(db, settings, task.id, "failed") == "failed"
        run = await _result(db, task.id)
        assert run["error"] == error
        assert run["result"]["output"].startswith(f"INFO doing {what}\n")
    # The pool replaced the workers that died: the next run is served.
    after = await new_task(db, "after", "blocking.pid", {})
    assert await _until(db, settings, after.id, "succeeded") == "succeeded"


@BOTH
async def test_a_def_handler_cancelled_while_it_runs_is_killed_with_its_subprocesses(
    settings: Settings, db: asyncpg.Connection, processor: object, tmp_path: Path
) -> None:
    path = tmp_path / "marks"
    task = await new_task(db, "long", "blocking.nap", {"path": str(path), "seconds": 30, "child": True})
    await distributor.service.run(settings, until_idle=True)
    start = await _started(path)
    worker, child = int(str(start["pid"])), int(str(start["child"]))
    assert alive(worker) and alive(child)
    await db.execute("UPDATE task_schedule SET status = 'cancelled' WHERE task_id = $1", task.id)

    async def gone() -> bool:
        return not alive(worker) and not alive(child)

    await wait_until(gone, timeout=10, what="the cancelled handler's worker and its subprocess to be killed")
    assert [m["event"] for m in marks(path)] == ["start"]
    assert await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", task.id) == "cancelled"


async def _started(path: Path) -> dict[str, object]:
    async def started() -> bool:
        return len(marks(path)) == 1

    await wait_until(started, timeout=20, what="the handler to start")
    return marks(path)[0]


@pytest.mark.parametrize("transport", ["postgres"])
async def test_workers_start_with_the_first_def_run_and_an_idle_one_serves_the_next(
    settings: Settings, db: asyncpg.Connection, processor: asyncio.subprocess.Process
) -> None:
    forkserver = _forkserver(processor)
    assert [pid for pid in _family(processor) if procs.parent(pid) == forkserver] == []  # no worker before a def run
    served_by = []
    for i in range(3):
        task = await new_task(db, f"pid-{i}", "blocking.pid", {})
        assert await _until(db, settings, task.id, "succeeded") == "succeeded"
        served_by.append((await _result(db, task.id))["result"]["result"])
    assert len(set(served_by)) == 1  # one after the other: the same worker, kept idle between them
    assert [pid for pid in _family(processor) if procs.parent(pid) == forkserver] == [served_by[0]]


@pytest.mark.parametrize("transport", ["postgres"])
async def test_a_sigkilled_processor_leaves_no_forkserver_worker_or_handler_subprocess_behind(
    settings: Settings, db: asyncpg.Connection, processor: asyncio.subprocess.Process, tmp_path: Path
) -> None:
    path = tmp_path / "marks"
    await new_task(db, "long", "blocking.nap", {"path": str(path), "seconds": 30, "child": True})
    await distributor.service.run(settings, until_idle=True)
    start = await _started(path)
    assert {processor.pid, start["pid"], start["child"]} <= set(_family(processor))
    mark = procs.environ(processor.pid)[MARK]
    processor.kill()

    async def none_left() -> bool:  # a zombie is not alive: the processor counts as gone before it is reaped
        return procs.marked(MARK, mark) == []

    # Not after processor.wait(): that waits for its output pipes to close, which a process left behind holds open.
    await wait_until(none_left, timeout=10, what="every process the processor started to die with it")
    await processor.wait()
    assert [m["event"] for m in marks(path)] == ["start"]


@pytest.mark.parametrize("transport", ["postgres"])
async def test_a_processor_stopped_by_sigterm_lets_a_running_def_handler_finish_then_leaves_nothing_behind(
    settings: Settings, db: asyncpg.Connection, processor: asyncio.subprocess.Process, tmp_path: Path
) -> None:
    path = tmp_path / "marks"
    task = await new_task(db, "nap", "blocking.nap", {"path": str(path), "seconds": 2})
    await distributor.service.run(settings, until_idle=True)
    await _started(path)
    mark = procs.environ(processor.pid)[MARK]
    await _stopped(processor)
    assert processor.returncode == 0
    assert [m["event"] for m in marks(path)] == ["start", "end"]
    assert await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", task.id) == "succeeded"
    assert procs.marked(MARK, mark) == []
