"""A worker process: runs plain `def` handlers, one call at a time, for the processor that started it
(taskmill/workerpool/pool.py), until that processor closes its end of their socket.

- It leads a process group of its own, so the processor stops a call by signalling the group: what the handler
  started goes with it. SIGTERM raises in the handler (its `finally` blocks and `with` exits run), and the processor
  follows with SIGKILL after a short grace.
- It dies with the processor, even a SIGKILLed one: a thread waits for the processor's end of the socket to close,
  then kills the whole group.
- Its logging is the processor's (same level, format and stream; lines carry the run's ids). `ctx.log` lines go to
  the processor, which adds them to the run's output and logs them.
- `ctx.conn` fails on first use, naming the problem: a def handler has no transaction of its own here.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import select
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, cast

from taskmill import handlers, logs
from taskmill.spawn import SpawnError
from taskmill.tasktypes.base import TaskFailed
from taskmill.workerpool import wire

if TYPE_CHECKING:
    from taskmill.db import Connection
    from taskmill.spawn import Flow

Send = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Setup:
    """What a worker needs from its processor: the handlers' modules (TASKMILL_IMPORTS) and how to log."""

    imports: tuple[str, ...]
    log_level: str
    log_format: str


class _Stopped(BaseException):
    """SIGTERM: the processor stops the call in hand (its timeout, a cancel). A BaseException, so that a handler's
    `except Exception` does not swallow it."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def main(sock: socket.socket, setup: Setup) -> None:
    """The worker's life, in the process the forkserver forked for it (taskmill/workerpool/forker.py)."""
    os.setsid()
    threading.Thread(target=_die_with_processor, args=(sock.fileno(),), name="taskmill-watch", daemon=True).start()
    signal.signal(signal.SIGTERM, _stop)
    logs.configure(setup.log_level, setup.log_format, role="processor")
    lock = threading.Lock()  # a handler's threads may log at once

    def send(reply: dict[str, Any]) -> None:
        data = wire.answer(reply)
        with lock:
            sock.sendall(data)

    try:
        try:
            handlers.import_modules(setup.imports)
        except handlers.ImportFailed as exc:
            send({"broken": str(exc)})
            return
        send({"ready": os.getpid()})
        number = 0
        while (data := wire.receive(sock)) is not None:
            number += 1
            reply = _serve(number, data, send)
            try:
                send(reply)
            except (TypeError, ValueError, RecursionError) as exc:  # a TaskFailed's result that cannot be JSON
                send({"call": number, "raised": f"TaskFailed with a result that cannot be JSON: {exc}", "trace": ""})
    except _Stopped:
        _flush()
        os._exit(128 + signal.SIGTERM)
    except OSError:
        os._exit(1)  # the processor is gone: so is this process, in a moment


def _die_with_processor(fd: int) -> None:
    """Waits for the processor's end of the socket to close (however it ended), then kills this process group: the
    worker, the handler it runs and whatever that started."""
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)
    while not poller.poll():
        pass
    os.killpg(0, signal.SIGKILL)


def _serve(number: int, data: bytes, send: Send) -> dict[str, Any]:
    """Runs one call; the answer that ends it."""
    try:
        call: wire.Call = pickle.loads(data)
        fn = handlers.HANDLERS[call.handler].fn
    except Exception as exc:
        return {"call": number, "raised": f"the worker process cannot take the call: {type(exc).__name__}: {exc}",
                "trace": ""}  # fmt: skip
    flow = _Flow() if call.can_spawn else None
    ctx = handlers.Context(
        call.run_id,
        call.task_id,
        call.attempt,
        call.scheduled_time,
        cast("Connection", _NoConnection()),
        _SentLog(number, call, send),
        cast("Flow | None", flow),
    )
    token = logs.enter_run(call.run_id, call.task_id)
    try:
        value = fn(ctx, call.payload)
    except _Stopped:
        raise
    except TaskFailed as exc:
        return {"call": number, "failed": exc.reason, "result": exc.result, "permanent": exc.permanent}
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they end the call, not the worker
        frames = exc.__traceback__.tb_next if exc.__traceback__ else None  # this frame's omitted
        trace = "".join(traceback.format_exception(type(exc), exc, frames))
        return {"call": number, "raised": f"{type(exc).__name__}: {exc}", "trace": trace}
    finally:
        logs.leave_run(token)
        _flush()
    try:
        # As the processor stores any run's result (processor/execute.py), so a def handler's reads back the same.
        result = json.dumps(handlers.jsonable(value), default=str)
    except Exception as exc:
        return {"call": number, "raised": f"its result cannot be stored as JSON: {type(exc).__name__}: {exc}",
                "trace": ""}  # fmt: skip
    return {"call": number, "returned": result, "wait": flow is not None and flow.wait}


def _flush() -> None:
    """What the handler printed reaches the processor's output before the next call, or the end."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class _SentLog(handlers.RunLog):
    """`ctx.log` in a worker: each line goes to the processor as it is written."""

    def __init__(self, number: int, call: wire.Call, send: Send) -> None:
        super().__init__(call.run_id, call.task_id)
        self._number = number
        self._send = send

    def add(self, level: int, text: str) -> None:
        self._send({"call": self._number, "log": level, "text": text})


class _NoConnection:
    """`ctx.conn` of a def handler: there is none, and using it says so."""

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"ctx.conn.{name}: a plain def handler has no database connection (it runs in a worker process); "
            "make the handler `async def` to use ctx.conn"
        )


@dataclass(slots=True)
class _Flow:
    """`ctx.flow` of a def handler: wait_for_children() is kept for the processor; spawning is refused."""

    wait: bool = False

    async def spawn(self, conn: object, specs: object) -> NoReturn:
        raise SpawnError(
            "ctx.spawn: a plain def handler cannot spawn (it runs in a worker process, outside the run's "
            "transaction); make the handler `async def` to spawn"
        )
