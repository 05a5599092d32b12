"""What a task type is: a payload model, a description and an async function that runs it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
from pydantic import BaseModel

from taskmill.tasktypes.jail import UNCONFINED, Jail

if TYPE_CHECKING:  # install.py takes stderr_tail from here; spawn.py imports the models, which import the types
    import httpx

    from taskmill.spawn import Flow
    from taskmill.tasktypes.install import InstallCache
    from taskmill.workerpool.pool import WorkerPool

JsonObject = dict[str, Any]

# How long a type that ends its own work at the run's timeout (TaskType.ends_at_timeout) has to report it before
# the processor cancels it: killing a command, draining its pipes and reading its output took over the 50 ms it had
# before on a loaded machine, and the output was lost. Well inside the lease, which runs `running_grace_s` (15 s)
# past the timeout.
REPORT_GRACE_S = 2.0


class TaskFailed(Exception):
    """The task ran and did not succeed; `result` keeps what it produced (exit code, output, status).

    `permanent`: another attempt cannot do better (a refused host), so no retry is scheduled."""

    def __init__(self, reason: str, result: JsonObject | None = None, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result
        self.permanent = permanent


class TaskSkipped(Exception):
    """The task decided not to run (a `run_if` condition said no): the run ends `skipped` with the reason."""

    def __init__(self, reason: str, result: JsonObject | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


@dataclass(slots=True)
class RunContext:
    run_id: int
    task_id: int
    attempt: int
    timeout_seconds: float
    output_cap: int
    http: httpx.AsyncClient
    secrets: dict[str, str] = field(default_factory=dict)
    # Bytes of an http response read at most; the rest is never read (the connection is closed).
    max_response_bytes: int = 1024 * 1024
    # Where command runs are confined (taskmill/tasktypes/jail.py); a processor passes the one it detected.
    jail: Jail = UNCONFINED
    scheduled_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Python handlers' connections (taskmill/handlers.py): each attempt's own transaction.
    pool: asyncpg.Pool | None = None
    # Where command tasks' install steps are prepared (taskmill/tasktypes/install.py); None: none may declare any.
    install_cache: InstallCache | None = None
    # Subtasks (taskmill/spawn.py): what this attempt spawned and asked for; None where runs cannot spawn.
    flow: Flow | None = None
    # The pool spawns of http and command tasks are created with (a handler's go in its own transaction).
    spawn_pool: asyncpg.Pool | None = None
    # Where plain `def` handlers run (taskmill/workerpool/); None: this processor serves none.
    workers: WorkerPool | None = None


@dataclass(frozen=True, slots=True)
class TaskType:
    name: str
    description: str
    payload_model: type[BaseModel]
    run: Callable[[Any, RunContext], Awaitable[JsonObject]]
    # The type ends its work at the run's timeout itself and fails the run with what it had done (a command is killed
    # and its output kept): the processor's own cancellation then comes REPORT_GRACE_S later, only as a backstop.
    ends_at_timeout: bool = False

    def parse(self, payload: JsonObject) -> BaseModel:
        return self.payload_model.model_validate(payload)


def stderr_tail(stderr: str, keep: int = 300) -> str:
    """The end of what a command printed on stderr, on one line: the reason a failed check or install step gives."""
    text = " ".join(stderr.split())
    return ("..." + text[-keep:]) if len(text) > keep else (text or "(no stderr)")


def cap_text(data: bytes, cap: int) -> tuple[str, bool]:
    """Decoded output no longer than `cap` bytes, and whether it was cut. NUL becomes U+FFFD: PostgreSQL text and
    jsonb cannot hold it."""
    return data[:cap].decode("utf-8", "replace").replace("\x00", "\ufffd"), len(data) > cap
