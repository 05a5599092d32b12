"""Where deliveries come from and how they are settled, whatever the transport: the consumer (processor/consume.py)
sees only this.

Settling: `done` (recorded, or a duplicate: the message is removed), `requeue` (not started: another processor takes
it), `reject` (no run can come of it: to the dead letters as it came, when publishing it there failed).
Prefetch: at most `concurrency` deliveries are held unsettled at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import asyncpg

from taskmill.settings import Settings
from taskmill.transport import Link


class Delivery(Protocol):
    @property
    def body(self) -> bytes: ...


Handler = Callable[[Delivery], Awaitable[None]]


class Intake(Protocol):
    async def subscribe(self, handler: Handler) -> None:
        """Starts handing deliveries to `handler` (which must return at once: it starts a task)."""
        ...

    async def keep(self, stop: asyncio.Event, room: Callable[[], bool]) -> None:
        """Keeps the deliveries coming until `stop`; raises when it cannot any more (the processor then stops).
        `room`: whether the processor could take more now."""
        ...

    async def cancel(self) -> None:
        """Stops taking work; deliveries held stay unsettled until settled."""
        ...

    async def ready(self) -> int:
        """Messages waiting to be handed out."""
        ...

    def done(self, delivery: Delivery) -> None: ...

    async def requeue(self, delivery: Delivery) -> None: ...

    async def reject(self, delivery: Delivery, reason: str) -> None: ...

    async def close(self) -> None:
        """Sends every settlement still due."""
        ...


def open_intake(
    link: Link, settings: Settings, pool: asyncpg.Pool, worker: str, types: Sequence[str] | None = None
) -> Intake:
    """`types`: the types a dedicated processor serves; None for one that serves every type (but those live
    dedicated processors serve: taskmill/transport/routes.py)."""
    if link.connection is None:
        from processor.pg_intake import PgIntake

        return PgIntake(pool, settings, worker, types)
    from processor.amqp_intake import AmqpIntake

    return AmqpIntake(link.connection, settings, types or ())
