"""Execution slots: at most `n` runs execute at once, whatever the messages carry.

asyncio.Semaphore's acquire checks every waiter (`locked()` looks for one not cancelled): with thousands of runs of
coalesced messages waiting, each acquire and release went through them all. Here a waiter costs O(1) to add and to
wake. A freed slot goes to the most urgent waiter (priority 9 down to 0), first come first served among equals: an
urgent run that reached a processor busy with a backlog starts next.
"""

from __future__ import annotations

import asyncio
from collections import deque

PRIORITIES = 10


class Closed(Exception):
    """No more slots are handed out: the processor stops, and a run that waited for one goes back unstarted."""


class Slots:
    def __init__(self, n: int) -> None:
        self._free = n
        self._waiting: list[deque[asyncio.Future[None]]] = [deque() for _ in range(PRIORITIES)]
        self._waiters = 0  # in every line, cancelled ones included until they are passed over
        self._closed = False

    @property
    def free(self) -> int:
        return self._free

    async def take(self, priority: int = 0) -> None:
        """Returns when a slot is this caller's; `give` it back when done. Raises Closed once `close` was called."""
        if self._closed:
            raise Closed
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(waiter)
        self._waiters += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # it was handed this slot just as it was cancelled: pass it on
            raise

    def give(self) -> None:
        """Hands the slot to the most urgent longest waiter, or frees it."""
        if self._waiters:
            for line in reversed(self._waiting):
                while line:
                    waiter = line.popleft()
                    self._waiters -= 1
                    if not waiter.done():
                        waiter.set_result(None)
                        return
        self._free += 1

    def close(self) -> None:
        """Every waiter, and every later caller, gets Closed instead of a slot (the slots taken stay taken until
        given back)."""
        self._closed = True
        for line in self._waiting:
            while line:
                waiter = line.popleft()
                self._waiters -= 1
                if not waiter.done():
                    waiter.set_exception(Closed())
