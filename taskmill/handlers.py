"""Your own Python functions as task types.

    from pydantic import BaseModel
    from taskmill import Context, handler

    class Invoice(BaseModel):
        customer_id: int

    @handler("billing.send_invoice", payload=Invoice, timeout_seconds=20)
    async def send_invoice(ctx: Context, payload: Invoice) -> dict:
        await ctx.conn.execute("INSERT INTO invoices_sent (customer_id) VALUES ($1)", payload.customer_id)
        return {"sent": True}

`taskmill processor --import billing.tasks` imports the module, which registers its handlers here; the handler's
name is a task type. Each attempt runs in a database transaction of its own (`ctx.conn`), committed when the handler
returns and rolled back when it raises; the run's status is recorded outside it, so a rolled-back handler still ends
failed or retrying with its error (seed 001).

A plain `def` handler runs in a worker process of the processor's (taskmill/workerpool/), so that one stopped by its
timeout or a cancel is killed, where a thread would run on beside the retry. It has no `ctx.conn` there (using it
fails, naming the problem); its log lines, result, exception and wait_for_children() come back to the processor.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from taskmill.db import Connection
from taskmill.models import HANDLER_NAME
from taskmill.spawn import Child, Flow, Input, SpawnError, SpawnSpec, inputs, spec_of
from taskmill.tasktypes.base import JsonObject, RunContext, TaskFailed, TaskType, cap_text
from taskmill.workerpool import wire

log = logging.getLogger(__name__)

# A handler's name: a task type (`billing.send_invoice`), never one of the built-in ones.
NAME = HANDLER_NAME

F = TypeVar("F", bound=Callable[..., Any])


class AnyPayload(BaseModel):
    """The payload of a handler that declares no model: any JSON object, handed over as it came."""

    model_config = ConfigDict(extra="allow")


class RunLog:
    """`ctx.log`: lines that land in the run's output (and in the processor's log, with the run's id)."""

    def __init__(self, run_id: int, task_id: int) -> None:
        self._lines: list[str] = []
        self._extra = {"run_id": run_id, "task_id": task_id}

    def _add(self, level: int, message: str, *args: object) -> None:
        self.add(level, message % args if args else message)

    def add(self, level: int, text: str) -> None:
        """A line as written (a worker process's, taskmill/workerpool/)."""
        self._lines.append(f"{logging.getLevelName(level)} {text}")
        log.log(level, text, extra=self._extra)

    def debug(self, message: str, *args: object) -> None:
        self._add(logging.DEBUG, message, *args)

    def info(self, message: str, *args: object) -> None:
        self._add(logging.INFO, message, *args)

    def warning(self, message: str, *args: object) -> None:
        self._add(logging.WARNING, message, *args)

    def error(self, message: str, *args: object) -> None:
        self._add(logging.ERROR, message, *args)

    def text(self) -> str:
        return "".join(line + "\n" for line in self._lines)


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler gets besides its payload."""

    run_id: int
    task_id: int
    attempt: int  # 1 for the first try
    scheduled_time: datetime
    conn: Connection  # inside the handler's own transaction (an async def handler's: a def handler has none)
    log: RunLog
    flow: Flow | None = None

    async def spawn(
        self,
        type: str,
        payload: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        depends_on: Sequence[Child | int | str] = (),
        max_retries: int = 0,
        retry_delay_seconds: float = 10.0,
        backoff: float = 1.0,
        timeout_seconds: float | None = None,
    ) -> Child:
        """A child run of `type`, created in this handler's transaction (so only if the handler succeeds). It may
        depend on siblings spawned before it (their Child, run id or key): it starts once they all succeeded."""
        spec = {
            "type": type,
            "payload": payload or {},
            "key": key,
            "depends_on": [d.run_id if isinstance(d, Child) else d for d in depends_on],
            "max_retries": max_retries,
            "retry_delay_seconds": retry_delay_seconds,
            "backoff": backoff,
            "timeout_seconds": timeout_seconds,
        }
        (child,) = await self.spawn_many([spec])
        return child

    async def spawn_many(self, specs: Sequence[SpawnSpec | dict[str, Any]]) -> list[Child]:
        """Several children in one round trip (each a SpawnSpec or its fields as a dict)."""
        if self.flow is None:
            raise SpawnError("this run cannot spawn children (no processor flow)")
        parsed = [s if isinstance(s, SpawnSpec) else spec_of(s, f"spawn {i}") for i, s in enumerate(specs, 1)]
        return await self.flow.spawn(self.conn, parsed)

    def wait_for_children(self) -> None:
        """The run ends when its children do: succeeded if they all did, failed with the first child's error."""
        if self.flow is None:
            raise SpawnError("this run cannot spawn children (no processor flow)")
        self.flow.wait = True

    async def inputs(self) -> list[Input]:
        """The runs this one depends on (a workflow step's dependencies, a reduce's children), with their results."""
        return await inputs(self.conn, self.run_id)


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    fn: Callable[..., Any]
    payload_model: type[BaseModel]
    timeout_seconds: float | None
    description: str
    module: str = field(default="")

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def task_type(self) -> TaskType:
        return TaskType(self.name, self.description, self.payload_model, self._run)

    async def _run(self, payload: BaseModel, rc: RunContext) -> JsonObject:
        return await (self._run_here(payload, rc) if self.is_async else self._run_in_worker(payload, rc))

    async def _run_here(self, payload: BaseModel, rc: RunContext) -> JsonObject:
        """An `async def` handler: in the event loop, in a transaction of its own."""
        if rc.pool is None:
            raise TaskFailed("this processor has no database pool for handlers", permanent=True)
        run_log = RunLog(rc.run_id, rc.task_id)
        try:
            async with rc.pool.acquire() as conn, conn.transaction():
                ctx = Context(rc.run_id, rc.task_id, rc.attempt, rc.scheduled_time, conn, run_log, rc.flow)
                value = await self.fn(ctx, payload)
        except TaskFailed:
            raise
        except Exception as exc:
            # Rolled back. The error is the exception, the output the log and the traceback (this frame's omitted).
            frames = exc.__traceback__.tb_next if exc.__traceback__ else None
            trace = "".join(traceback.format_exception(type(exc), exc, frames))
            output, _ = cap_text((run_log.text() + trace).encode(), rc.output_cap)
            raise TaskFailed(f"{type(exc).__name__}: {exc}", {"output": output}) from exc
        output, _ = cap_text(run_log.text().encode(), rc.output_cap)
        return {"result": jsonable(value), "output": output}

    async def _run_in_worker(self, payload: BaseModel, rc: RunContext) -> JsonObject:
        """A plain `def` handler: in a worker process, killed if the attempt is cancelled (its timeout, a cancel)."""
        if rc.workers is None:
            raise TaskFailed("this processor has no worker processes for plain def handlers", permanent=True)
        run_log = RunLog(rc.run_id, rc.task_id)
        call = wire.Call(self.name, payload, rc.run_id, rc.task_id, rc.attempt, rc.scheduled_time, rc.flow is not None)
        done = await rc.workers.run(call, run_log.add)
        if isinstance(done, wire.Failed):
            raise TaskFailed(done.reason, done.result, permanent=done.permanent)
        trace = done.trace if isinstance(done, wire.Raised) else ""
        output, _ = cap_text((run_log.text() + trace).encode(), rc.output_cap)
        if isinstance(done, wire.Returned):
            if done.wait and rc.flow is not None:
                rc.flow.wait = True
            return {"result": done.value, "output": output}
        raise TaskFailed(done.error if isinstance(done, wire.Raised) else done.reason, {"output": output})


def jsonable(value: Any) -> Any:
    """A handler's result as it is stored: a pydantic model as its JSON fields."""
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


HANDLERS: dict[str, Handler] = {}


def handler(
    name: str,
    *,
    payload: type[BaseModel] | None = None,
    timeout_seconds: float | None = None,
    description: str | None = None,
) -> Callable[[F], F]:
    """Registers the decorated function as the task type `name`. It is called as `fn(ctx, payload)`, `payload` an
    instance of the `payload` model (validated before the run, and by the API when the task is created)."""
    from taskmill.tasktypes import BUILTIN

    if not NAME.match(name):
        raise ValueError(f"handler name {name!r}: letters, digits, '_', '.', '-', starting with a letter or '_'")
    if name in BUILTIN:
        raise ValueError(f"handler name {name!r} is a built-in task type")
    if timeout_seconds is not None and timeout_seconds <= 0:
        raise ValueError(f"handler {name!r}: timeout_seconds must be positive")

    def register(fn: F) -> F:
        if len(inspect.signature(fn).parameters) != 2:
            raise TypeError(f"handler {name!r}: {fn.__qualname__} must take (ctx, payload)")
        known = HANDLERS.get(name)
        if known is not None and (known.module, known.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"handler {name!r} is registered twice: {known.module}.{known.fn.__qualname__} and "
                             f"{fn.__module__}.{fn.__qualname__}")  # fmt: skip
        doc = description if description is not None else inspect.getdoc(fn) or ""
        HANDLERS[name] = Handler(name, fn, payload or AnyPayload, timeout_seconds, doc.strip(), fn.__module__)
        return fn

    return register


class ImportFailed(Exception):
    """A module named by --import / TASKMILL_IMPORTS that cannot be imported (the message says which and why)."""


def import_modules(modules: Iterable[str]) -> list[Handler]:
    """Imports each module (which registers its handlers); returns every handler registered. The current directory
    is on the path, as for `python -m`."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ImportFailed(f"cannot import {module}: {type(exc).__name__}: {exc}") from exc
    return list(HANDLERS.values())


def task_type(name: str) -> TaskType | None:
    found = HANDLERS.get(name)
    return None if found is None else found.task_type()
