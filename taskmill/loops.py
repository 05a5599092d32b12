"""Running a role's background loops together: if one dies, the role stops loudly instead of limping on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


async def wait_or_stop(stop: asyncio.Event, timeout: float) -> bool:
    """Sleeps up to `timeout` seconds; True as soon as `stop` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await stop.wait()
    return stop.is_set()


async def run_loops(stop: asyncio.Event, **loops: Coroutine[Any, Any, None]) -> None:
    """Runs named loops until `stop` is set and they return; a loop that raises stops the others and re-raises."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in loops.items()]
    try:
        for finished in asyncio.as_completed(tasks):
            await finished
    except BaseException:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Backoff:
    """Pauses between attempts at something that keeps failing (a database that went away): from `first`
    doubling up to `cap`, each shortened by a random part of up to a half so replicas do not retry in step."""

    def __init__(self, cap: float, first: float = 0.2) -> None:
        self._cap = cap
        self._first = min(first, cap)
        self._failures = 0

    def next(self) -> float:
        pause = min(self._cap, self._first * 2.0**self._failures)
        self._failures = min(self._failures + 1, 30)
        return pause * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._failures = 0
