"""Driving roles and waiting on the database in tests, without sleeping blindly."""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from taskmill.messages import RunMessage
from taskmill.models import Schedule, Task, TaskCreate
from taskmill.settings import Settings
from taskmill.store.tasks import create_task
from tests import zygote

RoleRun = Callable[..., Coroutine[Any, Any, None]]


@asynccontextmanager
async def running(role: RoleRun, settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """Runs a role in this event loop for the body of the block, then stops it and waits for a clean exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(role(settings, stop=stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 40)


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def statuses(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT status::text, count(*) FROM task_schedule GROUP BY 1")
    return {r[0]: r[1] for r in rows}


async def wait_for_statuses(db: asyncpg.Connection, expected: dict[str, int], timeout: float = 20.0) -> None:
    async def check() -> bool:
        return await statuses(db) == expected

    try:
        await wait_until(check, timeout, what=f"statuses {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; have {await statuses(db)}") from None


async def new_task(
    db: asyncpg.Connection,
    name: str,
    type_: str = "noop",
    payload: dict[str, Any] | None = None,
    schedule: Schedule | None = None,
    **options: Any,
) -> Task:
    spec = TaskCreate(name=name, type=type_, payload=payload or {}, schedule=schedule or Schedule(), **options)
    return await create_task(db, spec)


def role_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a `taskmill` subprocess use the same database and broker prefix as a test."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.database_url,
        AMQP_URL=settings.amqp_url,
        TASKMILL_TRANSPORT=settings.transport_name,
        TASKMILL_QUEUE_LEASE_S=str(settings.queue_lease_s),
        TASKMILL_BROKER_PREFIX=settings.broker_prefix,
        TASKMILL_QUEUED_LEASE_S=str(settings.queued_lease_s),
        TASKMILL_RUNNING_GRACE_S=str(settings.running_grace_s),
        TASKMILL_RESCUE_INTERVAL_S=str(settings.rescue_interval_s),
        TASKMILL_LOG_FORMAT="text",
        TASKMILL_COMMAND_ISOLATION=settings.command_isolation,
        TASKMILL_COMMAND_USER=settings.command_user,
    )
    env.update(extra)
    return env


async def start_role_process(settings: Settings, *args: str, **env: str) -> asyncio.subprocess.Process:
    """`taskmill <args>` as a real subprocess (its own process, so it can be killed for real), forked from a zygote
    that has imported its role (tests/zygote.py)."""
    return await zygote.start(
        args, role_env(settings, **env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def exec_role_process(settings: Settings, *args: str, **env: str) -> asyncio.subprocess.Process:
    """`start_role_process`, but exec'd as users start it: for a test that looks at what the kernel shows of the
    process (its /proc environ and cmdline are its exec's; a forked one shows the zygote's)."""
    return await zygote.start(
        args, role_env(settings, **env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, fork=False
    )


@asynccontextmanager
async def role_process(
    settings: Settings, *args: str, ready: Callable[[], Awaitable[bool]], what: str, fork: bool = True, **env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`taskmill <args>` as a real process (with extra environment `env`; exec'd unless `fork`) for the body of the
    block, once `ready()` says so (failing with its stderr if it exits first); terminated afterwards."""
    proc = await (start_role_process if fork else exec_role_process)(settings, *args, **env)

    async def up() -> bool:
        if proc.returncode is not None:
            _, err = await proc.communicate()
            raise AssertionError(f"taskmill {' '.join(args)} exited {proc.returncode}: {err.decode()[-2000:]}")
        return await ready()

    try:
        await wait_until(up, timeout=30, what=what)
        yield proc
    finally:
        await stop_process(proc, 30)


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 20) -> None:
    """SIGTERM (a graceful stop), SIGKILL if it is not gone within `timeout`; returns once it is reaped."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def taskmill(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`taskmill ARGS` as a process, with only PATH and `env` in its environment (no settings leak in)."""
    return subprocess.run(
        [sys.executable, "-m", "taskmill.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TASKMILL_LOG_FORMAT": "text", **env},
    )


def run_message(**fields: Any) -> RunMessage:
    """A run message for run 1 of task 1, a noop due now, with `fields` changed."""
    defaults: dict[str, Any] = {
        "v": 1,
        "run_id": 1,
        "task_id": 1,
        "type": "noop",
        "payload": {},
        "attempt": 1,
        "scheduled_time": datetime.now(UTC),
        "timeout_seconds": 30,
        "max_retries": 0,
        "retry_delay_seconds": 1,
        "backoff": 1,
    }
    return RunMessage.model_validate(defaults | fields)


REPO = Path(__file__).resolve().parents[1]
# What a process of this checkout needs: the interpreter, the virtualenv (its packages, the bwrap wheel's binary) and
# the checkout (installed in the virtualenv as editable).
PYTHON_PATHS = (Path(sys.base_prefix), Path(sys.prefix), REPO)


def within_reach(argv: Sequence[str], stash: Path, paths: Sequence[Path] = PYTHON_PATHS) -> list[str]:
    """`argv` (which drops to another user), run so that that user can reach `paths` however deep they lie under a
    directory it may not enter (/root, a `mktemp -d`): in a mount namespace of the command's own, each such
    directory is covered by an empty tmpfs through which `paths` are mounted again. Nothing of the machine
    changes. `argv` as it is when nothing is in the way; `stash` is where the mounts wait meanwhile (root's)."""
    resolved = sorted({p.resolve() for p in paths})
    tops = [p for p in resolved if not any(q != p and q in p.parents for q in resolved)]
    moved: list[Path] = []
    barriers: set[Path] = set()
    for path in tops:
        # The outermost directory on the way that others may not pass through.
        barrier = next((d for d in reversed(path.parents) if not d.stat().st_mode & stat.S_IXOTH), None)
        if barrier is not None:
            moved.append(path)
            barriers.add(barrier)
    if not moved:
        return list(argv)
    outermost = [b for b in barriers if not any(c != b and c in b.parents for c in barriers)]
    stash.mkdir(exist_ok=True)
    steps = []
    for i, path in enumerate(moved):
        steps.append(f"mkdir -p {shlex.quote(str(stash / str(i)))} && mount --bind {shlex.quote(str(path))} "
                     f"{shlex.quote(str(stash / str(i)))}")  # fmt: skip
    for barrier in outermost:
        steps.append(f"mount -t tmpfs -o mode=0755,size=1m tmpfs {shlex.quote(str(barrier))}")
    for i, path in enumerate(moved):
        steps.append(f"mkdir -p {shlex.quote(str(path))} && mount --bind {shlex.quote(str(stash / str(i)))} "
                     f"{shlex.quote(str(path))}")  # fmt: skip
    return ["unshare", "--mount", "sh", "-c", " && ".join(steps) + ' && exec "$@"', "sh", *argv]
