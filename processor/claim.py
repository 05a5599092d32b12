"""Claiming a delivered run: hold it until it is due, then the compare-and-set into running, batched across
deliveries. The database decides who runs an attempt: a duplicate or stale delivery loses and is dropped."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import asyncpg

from processor.gate import DueGate
from taskmill.batcher import Batcher
from taskmill.db import is_transient
from taskmill.logs import described
from taskmill.loops import Backoff
from taskmill.messages import RunMessage
from taskmill.store.runs import Start, StartRequest, start_runs, started_by

log = logging.getLogger(__name__)

# Due by this host's clock and not yet by the database's: asked again this soon.
_EARLY_RETRY_S = 0.01


class Claimer:
    def __init__(self, pool: asyncpg.Pool, worker: str, db_retry_max_s: float) -> None:
        self._pool = pool
        self._worker = worker
        self._db_retry_max_s = db_retry_max_s
        self._starter: Batcher[StartRequest, Start] = Batcher(partial(start_runs, pool, worker), name="start")
        self._gate = DueGate()
        self._stopping = False
        self._running: set[tuple[int, int]] = set()  # (run, attempt) this process has won and not yet let go

    def start(self) -> None:
        self._starter.start()

    def stop(self) -> None:
        """Releases every run held until its time: each claim then returns None and its delivery goes back."""
        self._stopping = True
        self._gate.open_all()

    async def close(self) -> None:
        await self._starter.close()

    async def until_due(self, message: RunMessage) -> None:
        """Holds a run published ahead of its time until it is due (by this host's clock), or until stopping."""
        await self._gate.wait(message.scheduled_time.timestamp())

    async def claim(self, message: RunMessage, lease_s: float) -> Start | None:
        """Claims a run that is due; None when stopping.

        A database that went away is waited out (the delivery is held, not requeued: requeues count toward the
        broker's delivery limit); any other database error is raised."""
        request = StartRequest(message.run_id, message.attempt, lease_s, message.scheduled_time)
        backoff = Backoff(self._db_retry_max_s)
        uncertain = False  # a claim went out and no answer came back: it may have committed
        while not self._stopping:
            try:
                start = await self._starter.submit(request)
                if start is Start.LOST and uncertain:
                    start = await self._resume(request)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning(
                    "cannot start run %s yet: %s", message.run_id, described(exc), extra={"run_id": message.run_id}
                )
                uncertain = True
                await asyncio.sleep(backoff.next())
                continue
            if start is Start.WON:
                self._running.add((request.run_id, request.attempt))
            if start is not Start.EARLY:
                return start
            # Due by our clock, not yet by the database's: the database decides, so ask again shortly.
            await asyncio.sleep(_EARLY_RETRY_S)
        return None

    def release(self, message: RunMessage) -> None:
        """The attempt this process won has ended (recorded, or handed on)."""
        self._running.discard((message.run_id, message.attempt))

    async def _resume(self, request: StartRequest) -> Start:
        """After a claim whose reply was lost: won if it committed and no other copy in this process runs it.
        Otherwise the run would sit in running until its lease ran out and the rescuer spent an attempt on it."""
        if not await started_by(self._pool, self._worker, request):
            return Start.LOST
        if (request.run_id, request.attempt) in self._running:  # checked after the await: no await until added
            return Start.LOST
        log.info("run %s: the claim committed though its reply was lost", request.run_id)
        return Start.WON
