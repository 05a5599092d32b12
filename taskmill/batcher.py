"""Micro-batching: many concurrent callers, one database statement per batch.

While a statement is in flight, new requests gather; the next statement takes them all. An idle batcher adds
no delay (a lone request goes at once), a busy one makes batches as large as the load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(Exception):
    """The batcher was closed before this request's answer came: it was never sent, or (the message says which) its
    statement was cut off in flight and may have committed."""


class Batcher(Generic[T, R]):
    def __init__(
        self,
        flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_size: int = 1000,
        name: str = "batcher",
    ) -> None:
        self._flush = flush
        self._max_size = max_size
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        """Stops after the batch in flight; requests still waiting, and any submitted later, fail with BatcherClosed."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, fut in self._pending:
            if not fut.done():
                fut.set_exception(BatcherClosed(f"{self._name} closed before this request was sent"))
        self._pending.clear()

    async def submit(self, item: T) -> R:
        if self._closed:
            raise BatcherClosed(f"{self._name} is closed")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        self._ready.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            batch, self._pending = self._pending[: self._max_size], self._pending[self._max_size :]
            if not self._pending:
                self._ready.clear()
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            try:
                results = await self._flush([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(BatcherClosed(f"{self._name} closed while this request was in flight"))
                raise
            except Exception as exc:  # every caller in the batch learns of the failure and decides
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
