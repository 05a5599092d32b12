"""Running one attempt of a run within its timeout, and turning what happened into an outcome."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import ValidationError

from taskmill import handlers
from taskmill.messages import RunMessage
from taskmill.secrets import open_sealed
from taskmill.settings import Settings
from taskmill.spawn import Flow, Parent, SpawnError
from taskmill.tasktypes import BUILTIN, RunContext, TaskFailed, TaskSkipped
from taskmill.tasktypes.base import REPORT_GRACE_S
from taskmill.tasktypes.install import InstallCache, default_root
from taskmill.tasktypes.jail import Jail
from taskmill.workerpool.pool import WorkerPool


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    result: dict[str, Any] | None
    error: str | None
    duration_ms: float
    # A failure that another attempt cannot fix (an unknown type, a payload that does not fit it).
    permanent: bool = False
    # Not run, on purpose (a `run_if` condition): the run ends skipped, `error` saying why.
    skipped: bool = False
    # Its own work done, it waits for the children it spawned (taskmill/spawn.py).
    wait: bool = False

    def result_json(self) -> str | None:
        return None if self.result is None else json.dumps(self.result, default=str)


def context(
    message: RunMessage,
    settings: Settings,
    http: httpx.AsyncClient,
    jail: Jail,
    pool: asyncpg.Pool | None = None,
    spawn_pool: asyncpg.Pool | None = None,
    workers: WorkerPool | None = None,
) -> RunContext:
    """What the attempt runs with: its timeout (at most this processor's), limits and decrypted secrets, and (given
    a pool to create them with) what it may spawn. Raises SecretsError when this processor cannot read the
    secrets."""
    parent = Parent(
        message.run_id,
        message.task_id,
        message.scheduled_time,
        settings.spawn_max_depth,
        settings.spawn_max_children,
        settings.max_timeout_s,
    )
    return RunContext(
        message.run_id,
        message.task_id,
        message.attempt,
        min(message.timeout_seconds, settings.max_timeout_s),
        settings.output_cap_bytes,
        http,
        open_sealed(settings.secret_key, message.secrets) if message.secrets else {},
        max_response_bytes=settings.http_max_response_bytes,
        jail=jail,
        scheduled_time=message.scheduled_time,
        pool=pool,
        install_cache=install_cache(settings),
        flow=Flow(parent) if spawn_pool is not None or pool is not None else None,
        spawn_pool=spawn_pool,
        workers=workers,
    )


@functools.cache
def install_cache(settings: Settings) -> InstallCache:
    root = Path(settings.cache_dir) if settings.cache_dir else default_root(os.geteuid(), os.environ)
    return InstallCache(root, settings.install_cache_mb * 1024 * 1024)


async def execute(message: RunMessage, ctx: RunContext) -> Attempt:
    started = time.perf_counter()

    def elapsed() -> float:
        return (time.perf_counter() - started) * 1000

    tasktype = BUILTIN.get(message.type) or handlers.task_type(message.type)
    if tasktype is None:
        return Attempt(False, None, f"unknown task type {message.type!r}", elapsed(), permanent=True)
    try:
        payload = tasktype.parse(message.payload)
    except ValidationError as exc:
        return Attempt(False, None, f"payload does not fit type {message.type}: {exc}", elapsed(), permanent=True)
    limit_s = ctx.timeout_seconds + (REPORT_GRACE_S if tasktype.ends_at_timeout else 0.0)
    try:
        async with asyncio.timeout(limit_s):
            result = await tasktype.run(payload, ctx)
    except TimeoutError:
        return Attempt(False, None, f"timed out after {ctx.timeout_seconds:g} s", elapsed())
    except TaskFailed as exc:
        return Attempt(False, exc.result, exc.reason, elapsed(), permanent=exc.permanent)
    except TaskSkipped as exc:
        return Attempt(False, exc.result, exc.reason, elapsed(), skipped=True)
    except SpawnError as exc:
        return Attempt(False, None, str(exc), elapsed())
    except Exception as exc:  # a task type's own bug fails the run, never the processor
        return Attempt(False, None, f"{type(exc).__name__}: {exc}", elapsed())
    flow = ctx.flow
    if flow is not None and flow.pending:
        # What an http answer or a spawn file asked for, created now that the run's own work is done.
        if ctx.spawn_pool is None:
            return Attempt(False, result, "this processor cannot create spawned runs", elapsed())
        try:
            await flow.spawn_pending(ctx.spawn_pool)
        except SpawnError as exc:
            return Attempt(False, result, str(exc), elapsed())
    return Attempt(True, result, None, elapsed(), wait=flow is not None and flow.wait)
