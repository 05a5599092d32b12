"""Execution slots: at most `n` runs execute at once, whatever the messages carry.

asyncio.Semaphore's acquire checks every waiter (`locked()` looks for one not cancelled): with thousands of runs of
coalesced messages waiting, each acquire and release went through them all. Here a waiter costs O(1) to add and to
wake, first come first served.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    def __init__(self, n: int) -> None:
        self._free = n
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def take(self) -> None:
        """Returns when a slot is this caller's; `give` it back when done."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # it was handed this slot just as it was cancelled: pass it on
            raise

    def give(self) -> None:
        """Hands the slot to the longest waiter, or frees it."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
