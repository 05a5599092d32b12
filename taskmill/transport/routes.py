"""Which runs go to dedicated processors (`taskmill processor --types ...`): a type that dedicated processors at work
serve is routed to them only; every other type to the processors that serve every type. Read from the `processors`
table every couple of seconds, so every publisher (distributor, rescuer, a processor's retries) routes alike.

"At work" is more than a live row (one seen within LIVE_WITHIN_S, which a processor killed keeps for that long):
the transport says whether the processor takes work now (`Serving`): over RabbitMQ its queue has a consumer, over
PostgreSQL it holds its presence lock. Either goes with the processor's connection, at once."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

import asyncpg

from taskmill.logs import described
from taskmill.store.processors import LIVE_WITHIN_S, dedicated

log = logging.getLogger(__name__)

# Over RabbitMQ a dedicated type is published with this prefix to its routing key (taskmill/topology.py), and a
# run of priority 1-9 with URGENT_PREFIX before that, to the urgent twin of the queue it would go to.
DEDICATED_PREFIX = "only."
URGENT_PREFIX = "urgent."

# Of the live dedicated processors ({worker: types}), those taking work now.
Serving = Callable[[dict[str, list[str]]], Awaitable[dict[str, list[str]]]]


def lane_key(key: str, priority: int) -> str:
    """The routing key of a run of `priority` whose type routes to `key`: the urgent lane's for 1-9."""
    return f"{URGENT_PREFIX}{key}" if priority > 0 else key


class Routes:
    def __init__(self, pool: asyncpg.Pool, refresh_s: float = 2.0, serving: Serving | None = None) -> None:
        """`serving`: the transport's word on which live dedicated processors take work now; None: all of them."""
        self._pool = pool
        self._refresh_s = refresh_s
        self._serving = serving
        self._types: frozenset[str] = frozenset()
        self._sets: list[list[str]] = []
        self._read = -math.inf
        self._reading = asyncio.Lock()

    async def dedicated(self) -> frozenset[str]:
        """The types dedicated processors at work serve (the last answer while the database is away). Callers
        that come while it is read wait for that read: none routes by an answer older than the refresh period."""
        if self._stale():
            async with self._reading:
                if self._stale():
                    await self._load()
        return self._types

    async def refresh(self) -> frozenset[str]:
        """`dedicated`, read now whatever the age of the last answer."""
        async with self._reading:
            await self._load()
        return self._types

    async def _load(self) -> None:
        try:
            found = await dedicated(self._pool, LIVE_WITHIN_S)
            if self._serving is not None and found:
                found = await self._serving(found)
        except Exception as exc:
            log.info("cannot read the dedicated processors: %s", described(exc))
        else:
            self._types = frozenset(t for types in found.values() for t in types)
            self._sets = sorted({tuple(sorted(types)): sorted(types) for types in found.values()}.values())
        self._read = time.monotonic()

    async def type_sets(self) -> list[list[str]]:
        """The sets of types dedicated processors at work serve (one queue each), each sorted."""
        await self.dedicated()
        return self._sets

    def _stale(self) -> bool:
        return time.monotonic() - self._read > self._refresh_s

    async def routing_key(self, task_type: str, priority: int = 0) -> str:
        """The RabbitMQ routing key for a run of `task_type` and `priority`."""
        key = f"{DEDICATED_PREFIX}{task_type}" if task_type in await self.dedicated() else task_type
        return lane_key(key, priority)
