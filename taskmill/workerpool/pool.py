"""The processor's side: worker processes for plain `def` handlers, forked when a call needs one (by the forkserver,
taskmill/workerpool/forker.py, started with the pool), kept for the next call while idle, and killed when a call
must stop.

A call that is cancelled (its run's timeout, the run cancelled while it runs, the processor stopping) stops its
worker before the cancellation goes on: SIGTERM to the worker's process group, SIGKILL to it after a short grace,
then its exit awaited. Only then does the attempt end, so its retry cannot start before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from taskmill.workerpool import wire
from taskmill.workerpool.child import Setup

log = logging.getLogger(__name__)

T = TypeVar("T")

# A stopped call's handler gets this long, after SIGTERM, to run its `finally` blocks before SIGKILL.
TERM_GRACE_S = 2.0
# A worker whose socket closed (it died) is given this long to be reaped before its group is SIGKILLed.
_EXIT_WAIT_S = 5.0
# The forkserver (importing taskmill) and a worker (importing the handlers' modules) are ready within this, or killed.
_READY_WAIT_S = 60.0

OnLog = Callable[[int, str], None]


class WorkerPool:
    """At most `size` workers (the processor's concurrency: one call at a time each), none before the first call."""

    def __init__(self, setup: Setup, size: int, grace_s: float = TERM_GRACE_S) -> None:
        self._setup = setup
        self._size = size
        self._grace_s = grace_s
        self._forker: asyncio.Task[_Forker] | None = None
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()  # started and not yet gone
        self._starting: set[asyncio.Task[_Worker]] = set()
        self._closed = False

    @property
    def idle(self) -> int:
        """Workers started and waiting for a call."""
        return len(self._idle)

    def warm(self) -> None:
        """Starts the forkserver (most of a second) in the background; no worker yet."""
        self._forker_task()

    async def ready(self) -> None:
        """Waits for the forkserver, so that the first call does not. One that cannot start is logged, and tried
        again at the first call."""
        try:
            await self._forker_task()
        except Exception as exc:
            log.error("cannot start the forkserver for def handlers: %s: %s", type(exc).__name__, exc)

    async def run(self, call: wire.Call, on_log: OnLog) -> wire.Done:
        """Runs the call in a worker, `on_log(level, text)` for each ctx.log line. Cancelled, it stops the worker
        for real before the cancellation goes on."""
        try:
            worker = await self._take()
        except _CannotStart as exc:
            return wire.Died(str(exc))
        try:
            done = await worker.call(call, on_log)
        except BaseException:
            await _to_the_end(self._stop(worker))
            raise
        if isinstance(done, wire.Died):
            await self._gone(worker)
        else:
            self._give(worker)
        return done

    async def close(self) -> None:
        """Kills every worker and the forkserver, and waits for them; the pool takes no more calls."""
        self._closed = True
        self._idle.clear()
        await asyncio.gather(*(self._kill(worker) for worker in list(self._workers)))
        await asyncio.gather(*self._starting, return_exceptions=True)  # their workers, just killed, never got ready
        await asyncio.gather(*(self._kill(worker) for worker in list(self._workers)))  # forked meanwhile
        if self._forker is not None:
            await asyncio.gather(self._forker, return_exceptions=True)
            if not self._forker.cancelled() and self._forker.exception() is None:
                await self._forker.result().close()

    def _forker_task(self) -> asyncio.Task[_Forker]:
        """The forkserver, started again if it failed to start or has died since."""
        known = self._forker
        if known is None or (
            known.done() and (known.cancelled() or known.exception() is not None or known.result().gone)
        ):
            self._forker = asyncio.get_running_loop().create_task(_Forker.start(self._setup, self._lost_forker))
        assert self._forker is not None
        return self._forker

    def _lost_forker(self) -> None:
        """The forkserver died (killed from outside): no worker's exit can be learnt any more, so they all go."""
        log.error("the forkserver of the def handlers' worker processes died: killing its workers")
        for worker in self._workers:
            worker.signal(signal.SIGKILL)

    async def _take(self) -> _Worker:
        while self._idle:
            worker = self._idle.pop()
            if not worker.ended():
                return worker
            await self._gone(worker)  # died while idle (killed from outside, out of memory)
        if self._closed:
            raise _CannotStart("the processor is stopping")
        task = asyncio.create_task(self._start())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._started_for_none)
            raise

    def _started_for_none(self, task: asyncio.Task[_Worker]) -> None:
        """A worker started for a call that went away: the next call takes it."""
        if not task.cancelled() and task.exception() is None:
            self._give(task.result())

    def _give(self, worker: _Worker) -> None:
        if self._closed or len(self._idle) >= self._size:
            asyncio.get_running_loop().create_task(self._kill(worker))
        else:
            self._idle.append(worker)

    async def _start(self) -> _Worker:
        try:
            forker = await self._forker_task()
        except Exception as exc:
            raise _CannotStart(f"cannot start the forkserver for def handlers: {type(exc).__name__}: {exc}") from exc
        mine, theirs = socket.socketpair()
        try:
            pid, exit = await forker.fork(theirs)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=mine)
        worker = _Worker(pid, exit, reader, writer)
        self._workers.add(worker)
        try:
            hello = await asyncio.wait_for(wire.read(reader), _READY_WAIT_S)
        except TimeoutError:
            hello = {"broken": f"not ready after {_READY_WAIT_S:g} s (importing {', '.join(self._setup.imports)})"}
        if hello is None or "ready" not in hello:
            why = hello["broken"] if hello else await worker.death()
            await self._kill(worker)
            raise _CannotStart(f"the worker process cannot serve: {why}")
        log.debug("worker process %s started", worker.pid)
        return worker

    async def _stop(self, worker: _Worker) -> None:
        """A call is cancelled: its handler gets SIGTERM, then SIGKILL after the grace, and is gone on return."""
        worker.signal(signal.SIGTERM)
        if not await worker.exited(self._grace_s):
            log.warning("worker process %s still running %.0f s after SIGTERM: SIGKILL", worker.pid, self._grace_s)
        await self._kill(worker)
        log.info("stopped the worker process %s running the handler", worker.pid)

    async def _kill(self, worker: _Worker) -> None:
        worker.signal(signal.SIGKILL)
        await self._gone(worker)

    async def _gone(self, worker: _Worker) -> None:
        """A worker that ended or is ending: waited for, what is left of its group killed (a handler's
        subprocesses), its socket closed."""
        if not await worker.exited(_EXIT_WAIT_S):
            worker.signal(signal.SIGKILL)
            await worker.exited(None)
        worker.signal(signal.SIGKILL)
        self._workers.discard(worker)
        await worker.release()


class _CannotStart(Exception):
    """No worker could be had for a call (the message says why)."""


class _Forker:
    """The processor's handle on the forkserver (taskmill/workerpool/forker.py)."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sender: socket.socket,
        on_lost: Callable[[], None],
    ) -> None:
        self._proc = proc
        self._reader = reader
        self._writer = writer
        self._sender = sender  # the same socket, for what a stream cannot send: a worker's socket (SCM_RIGHTS)
        self._on_lost = on_lost
        self._asking = asyncio.Lock()
        self._forks: list[asyncio.Future[tuple[int, asyncio.Future[int]]]] = []  # answers due, in the order asked
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._reading: asyncio.Task[None] | None = None
        self.gone = False

    @classmethod
    async def start(cls, setup: Setup, on_lost: Callable[[], None]) -> _Forker:
        mine, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                f"from taskmill.workerpool.forker import main; main({theirs.fileno()})",
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
            )
        finally:
            theirs.close()
        sender = socket.socket(fileno=os.dup(mine.fileno()))
        reader, writer = await asyncio.open_unix_connection(sock=mine)
        forker = cls(proc, reader, writer, sender, on_lost)
        given = {"sys_path": sys.path, "imports": setup.imports, "log_level": setup.log_level,
                 "log_format": setup.log_format}  # fmt: skip
        writer.write(wire.frame(json.dumps(given).encode()))
        try:
            hello = await asyncio.wait_for(wire.read(reader), _READY_WAIT_S)
        except TimeoutError:
            hello = None
        if hello is None or "ready" not in hello:
            await forker.close()
            raise RuntimeError(f"it did not get ready (exit code {proc.returncode})")
        forker._reading = asyncio.get_running_loop().create_task(forker._read())
        log.info("forkserver for def handlers started (process %s)", proc.pid)
        return forker

    async def fork(self, sock: socket.socket) -> tuple[int, asyncio.Future[int]]:
        """A new worker, handed `sock`: its pid, and its exit code to come."""
        answer: asyncio.Future[tuple[int, asyncio.Future[int]]] = asyncio.get_running_loop().create_future()
        async with self._asking:
            if self.gone:
                raise _CannotStart("the forkserver for def handlers is gone")
            self._forks.append(answer)
            while True:
                try:
                    socket.send_fds(self._sender, [b"F"], [sock.fileno()])
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                except OSError as exc:
                    self._forks.remove(answer)
                    raise _CannotStart(f"the forkserver for def handlers is gone: {exc}") from exc
        return await answer

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while (reply := await wire.read(self._reader)) is not None:
            if "exit" in reply:
                if (exit := self._exits.pop(int(reply["exit"]), None)) is not None:
                    exit.set_result(int(reply["code"]))
            elif self._forks:
                answer = self._forks.pop(0)
                if "forked" in reply:
                    exit = self._exits[int(reply["forked"])] = loop.create_future()
                    answer.set_result((int(reply["forked"]), exit))
                else:
                    answer.set_exception(_CannotStart(f"cannot start a worker process: {reply.get('cannot')}"))
        self._lost()

    def _lost(self) -> None:
        if self.gone:
            return
        self.gone = True
        for answer in self._forks:
            answer.set_exception(_CannotStart("the forkserver for def handlers is gone"))
        self._forks.clear()
        self._on_lost()
        for exit in self._exits.values():  # killed by the pool just now: it runs no more of its handler
            exit.set_result(-signal.SIGKILL)
        self._exits.clear()
        self._writer.close()
        self._sender.close()

    async def close(self) -> None:
        """Closing its socket ends it."""
        self.gone = True
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
        self._writer.close()
        self._sender.close()
        try:
            await asyncio.wait_for(self._proc.wait(), _EXIT_WAIT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()


class _Worker:
    def __init__(
        self, pid: int, exit: asyncio.Future[int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.pid = pid
        self._exit = exit
        self._reader = reader
        self._writer = writer
        self._calls = 0

    def ended(self) -> bool:
        return self._exit.done()

    async def call(self, call: wire.Call, on_log: OnLog) -> wire.Done:
        try:
            data = pickle.dumps(call)
        except Exception as exc:
            return wire.Failed(f"the payload cannot be handed to a worker process: {type(exc).__name__}: {exc}",
                               None, permanent=True)  # fmt: skip
        self._calls += 1
        try:
            self._writer.write(wire.frame(data))
            await self._writer.drain()
            while (reply := await wire.read(self._reader)) is not None:
                if reply.get("call") != self._calls:
                    continue  # a line a thread of an earlier call logged late
                if "log" in reply:
                    on_log(int(reply["log"]), str(reply["text"]))
                    continue
                return wire.ended(reply)
        except ConnectionError:
            pass
        return wire.Died(f"the handler's worker process died: {await self.death()}")

    async def death(self) -> str:
        """How the worker ended, in words."""
        code = await self.exit_code(_EXIT_WAIT_S)
        if code is None:
            return "it closed its socket and did not exit"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def signal(self, sig: signal.Signals) -> None:
        """To the worker's whole process group: the handler's subprocesses too."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def exited(self, timeout: float | None) -> bool:
        """Whether the worker has ended, waiting up to `timeout` s (None: as long as it takes)."""
        return await self.exit_code(timeout) is not None

    async def exit_code(self, timeout: float | None) -> int | None:
        """The worker's exit code (a signal as its negative number) once it has ended; None if it runs on after
        `timeout` s."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._exit), timeout)
        except TimeoutError:
            return None

    async def release(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


async def _to_the_end(work: Awaitable[T]) -> T:
    """Awaits `work` to its end even when cancelled meanwhile; the cancellation is raised after."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                cancelled = True
                continue
            raise
        if cancelled:
            raise asyncio.CancelledError
        return result
