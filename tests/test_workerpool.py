"""The worker processes of plain `def` handlers (taskmill/workerpool/), driven in this process: what a stopped call
leaves (nothing), what a worker's death or a forkserver's looks like, what calls at once and one after the other get.
The handlers are tests/handlers/blocking.py's, imported by the workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from taskmill.handlers import AnyPayload
from taskmill.workerpool import wire
from taskmill.workerpool.child import Setup
from taskmill.workerpool.pool import WorkerPool
from tests.faults import procs
from tests.handlers.blocking import Nap, Stubborn, alive, marks
from tests.helpers import wait_until

GRACE_S = 0.5


@pytest.fixture
async def workers() -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(Setup(("tests.handlers.blocking",), "INFO", "text"), size=4, grace_s=GRACE_S)
    pool.warm()
    await pool.ready()
    yield pool
    await pool.close()


def _call(handler: str, payload: BaseModel | None = None) -> wire.Call:
    return wire.Call(handler, payload or AnyPayload(), 1, 1, 1, datetime.now(UTC), can_spawn=True)


def _forkservers() -> list[int]:
    return [p for p in procs.pids() if procs.parent(p) == os.getpid() and "workerpool.forker" in procs.cmdline(p)]


async def _pid(workers: WorkerPool) -> int:
    done = await workers.run(_call("blocking.pid"), lambda level, text: None)
    assert isinstance(done, wire.Returned), done
    pid: int = done.value
    return pid


async def test_a_call_stopped_by_its_timeout_returns_only_once_its_worker_and_subprocesses_are_gone(
    workers: WorkerPool, tmp_path: Path
) -> None:
    path = tmp_path / "marks"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1):
            await workers.run(_call("blocking.nap", Nap(path=str(path), seconds=30, child=True)), print)
    (start,) = marks(path)
    # Not a moment later: gone as the cancellation goes on (a retry started now runs alone).
    assert not alive(int(str(start["pid"]))) and not alive(int(str(start["child"])))


async def test_a_handler_that_outstays_the_sigterm_grace_is_sigkilled(workers: WorkerPool, tmp_path: Path) -> None:
    path = tmp_path / "marks"
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1):
            await workers.run(_call("blocking.stubborn", Stubborn(path=str(path), cleanup_s=30)), print)
    assert time.monotonic() - began < 1 + GRACE_S + 1.5
    # SIGTERM ran its `finally`, SIGKILL ended it there.
    assert [m["event"] for m in marks(path)] == ["start", "cleanup"]
    assert not alive(int(str(marks(path)[0]["pid"])))


async def test_a_line_logged_after_its_call_ended_is_not_taken_for_the_next_calls(workers: WorkerPool) -> None:
    first: list[str] = []
    done = await workers.run(_call("blocking.stray"), lambda level, text: first.append(text))
    assert done == wire.Returned("done", False)
    await asyncio.sleep(0.6)  # the stray thread has logged meanwhile
    second: list[str] = []
    done = await workers.run(_call("blocking.pid"), lambda level, text: second.append(text))
    assert isinstance(done, wire.Returned)
    assert first == [] and second == []


async def test_a_payload_that_cannot_be_pickled_fails_permanently_and_leaves_the_worker_serving(
    workers: WorkerPool,
) -> None:
    class Local(BaseModel):  # defined here: pickle cannot find it by name
        x: int = 1

    before = await _pid(workers)
    done = await workers.run(_call("blocking.pid", Local()), print)
    assert isinstance(done, wire.Failed) and done.permanent
    assert done.reason.startswith("the payload cannot be handed to a worker process: ")
    assert await _pid(workers) == before


async def test_calls_at_once_get_workers_of_their_own_and_run_side_by_side(workers: WorkerPool, tmp_path: Path) -> None:
    paths = [tmp_path / f"marks-{i}" for i in range(3)]
    began = time.monotonic()
    results = await asyncio.gather(
        *(workers.run(_call("blocking.nap", Nap(path=str(p), seconds=1)), print) for p in paths)
    )
    assert time.monotonic() - began < 2.5  # three 1 s naps at once, not one after the other
    assert all(r == wire.Returned({"slept": 1.0}, False) for r in results)
    assert len({marks(p)[0]["pid"] for p in paths}) == 3


async def test_a_call_cancelled_while_its_worker_starts_leaves_that_worker_to_the_next_call(
    workers: WorkerPool,
) -> None:
    call = asyncio.create_task(workers.run(_call("blocking.pid"), print))
    await asyncio.sleep(0)  # it has asked for a worker: none is idle, so one is forked
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def kept() -> bool:
        return workers.idle == 1

    await wait_until(kept, timeout=10, what="the worker started for the cancelled call to be idle")
    pid = await _pid(workers)
    (forkserver,) = _forkservers()
    assert [p for p in procs.pids() if procs.parent(p) == forkserver and procs.alive(p)] == [pid]


async def test_a_killed_forkserver_takes_its_workers_along_and_the_next_call_starts_a_new_one(
    workers: WorkerPool,
) -> None:
    worker = await _pid(workers)
    (forkserver,) = _forkservers()
    os.kill(forkserver, signal.SIGKILL)

    async def gone() -> bool:
        return not alive(worker)

    await wait_until(gone, timeout=10, what="the forkserver's worker to be killed")
    assert await _pid(workers) != worker
    assert len(_forkservers()) == 1 and _forkservers() != [forkserver]
