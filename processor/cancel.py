"""Stopping runs cancelled while they run (a task's `overlap: cancel_previous`): every second the processor asks
which of the runs it is executing the database now holds cancelled, and cancels those attempts (a command's whole
process group goes with it). Nothing is recorded for them: the run is cancelled already."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from taskmill.db import is_transient
from taskmill.store.runs import cancelled_among

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopper:
    def __init__(self, pool: asyncpg.Pool, every_s: float) -> None:
        self._pool = pool
        self._every_s = every_s
        self._running: dict[int, tuple[datetime, asyncio.Task[Any]]] = {}
        self._stopped: set[int] = set()  # cancelled by us: their CancelledError is ours
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)

    async def run(self, run_id: int, scheduled_time: datetime, work: Coroutine[Any, Any, T]) -> T | None:
        """Awaits `work` in the calling task (no task of its own: this is every run's path); None when it was
        stopped because its run was cancelled."""
        task = asyncio.current_task()
        assert task is not None
        self._running[run_id] = (scheduled_time, task)
        try:
            return await work
        except asyncio.CancelledError:
            if run_id not in self._stopped or task.cancelling() > 1:
                raise  # cancelled by someone else too (a shutdown): that goes on
            task.uncancel()
            log.info("run %s was cancelled while running: stopped", run_id, extra={"run_id": run_id})
            return None
        finally:
            self._running.pop(run_id, None)
            self._stopped.discard(run_id)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            if not self._running:
                continue
            keys = [(run_id, at) for run_id, (at, _) in self._running.items()]
            try:
                found = await cancelled_among(self._pool, keys)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                continue  # the database is away: asked again next time
            for run_id in found:
                if (held := self._running.get(run_id)) is not None and run_id not in self._stopped:
                    self._stopped.add(run_id)
                    held[1].cancel()
