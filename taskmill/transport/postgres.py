"""The PostgreSQL transport's publisher: a publish is an INSERT into `run_queue`, confirmed when it commits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from taskmill.db import is_transient
from taskmill.logs import described
from taskmill.messages import batch_body
from taskmill.metrics import DEAD_LETTERED, PUBLISH_FAILED, PUBLISHED
from taskmill.states import RunState
from taskmill.store import queue
from taskmill.store.processors import LIVE_WITHIN_S, live_count
from taskmill.store.runs import Outbound
from taskmill.transport import coalesce

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PgPublisher:
    pool: asyncpg.Pool
    timeout_s: float

    async def publish_runs(self, runs: Sequence[Outbound], per_message: int = 1) -> list[bool]:
        """All the runs' messages in one INSERT: all confirmed, or (the database went away) none."""
        if not runs:
            return []
        messages = [_message(group) for group in coalesce(runs, per_message)]
        try:
            async with asyncio.timeout(self.timeout_s):
                await queue.enqueue(self.pool, messages)
        except Exception as exc:
            if not is_transient(exc) and not isinstance(exc, TimeoutError):
                raise
            PUBLISH_FAILED.inc(len(runs))
            log.warning("cannot publish %d runs: %s", len(runs), described(exc))
            return [False] * len(runs)
        PUBLISHED.inc(len(runs))
        DEAD_LETTERED.labels("gave up").inc(sum(1 for m in messages if m.reason is not None))
        return [True] * len(runs)

    async def consumers(self) -> int:
        async with asyncio.timeout(self.timeout_s):
            return await live_count(self.pool, LIVE_WITHIN_S)

    async def queue_depths(self) -> dict[str, int]:
        async with asyncio.timeout(self.timeout_s):
            return await queue.depths(self.pool)

    async def publish_delayed(self, body: bytes, run_id: int, task_type: str, delay_ms: int, priority: int = 0) -> None:
        message = queue.Message(task_type, body, run_id, delay_s=delay_ms / 1000, priority=priority)
        async with asyncio.timeout(self.timeout_s):
            await queue.enqueue(self.pool, [message])

    async def forward(self, body: bytes, run_id: int, task_type: str, priority: int = 0) -> None:
        async with asyncio.timeout(self.timeout_s):
            await queue.enqueue(self.pool, [queue.Message(task_type, body, run_id, priority=priority)])

    async def publish_dead(self, body: bytes, run_id: int | None, reason: str, *, kind: str = "gave up") -> None:
        DEAD_LETTERED.labels(kind).inc()
        async with asyncio.timeout(self.timeout_s):
            await queue.enqueue(self.pool, [queue.Message("", body, run_id, reason=reason[:1000] or "dead")])


def _message(runs: list[Outbound]) -> queue.Message:
    first = runs[0]
    if first.status is RunState.DEAD:
        return queue.Message(
            first.type, first.body, first.run_id, reason=first.reason or "processor lost on the last attempt"
        )
    body = first.body if len(runs) == 1 else batch_body([run.body for run in runs])
    return queue.Message(first.type, body, first.run_id, priority=first.priority)
