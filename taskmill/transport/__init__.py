"""How runs travel from the distributor to the processors: one interface, two transports.

- `amqp` (taskmill/broker.py, taskmill/topology.py): RabbitMQ, for large installations and many hosts.
- `postgres` (taskmill/transport/postgres.py, the `run_queue` table): nothing but the database, for small ones and
  for `taskmill dev`.

The roles hold a `Link` and publish through its `Publisher`; the processor consumes through an intake of the same
transport (processor/intake.py). Nothing above them knows which transport runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from aio_pika.abc import AbstractRobustConnection

from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import Outbound


class Publisher(Protocol):
    async def publish_runs(self, runs: Sequence[Outbound], per_message: int = 1) -> list[bool]:
        """Publishes the runs, up to `per_message` of one type in a message (dead ones alone, to the dead letters);
        True where the transport confirmed the message that carried the run."""
        ...

    async def consumers(self) -> int:
        """Processors taking work now (for how many runs to put in a message)."""
        ...

    async def queue_depths(self) -> dict[str, int]:
        """Messages ready in each queue, by name without the prefix: work, work.urgent, dead (and, over RabbitMQ,
        the queues of dedicated processors)."""
        ...

    async def publish_delayed(self, body: bytes, run_id: int, task_type: str, delay_ms: int, priority: int = 0) -> None:
        """A retry, handed out `delay_ms` from now. Raises when the transport did not take it."""
        ...

    async def forward(self, body: bytes, run_id: int, task_type: str, priority: int = 0) -> None:
        """A message as it came (version 1 or 2) to the processors of its type, now. Raises when the transport did
        not take it."""
        ...

    async def publish_dead(self, body: bytes, run_id: int | None, reason: str, *, kind: str = "gave up") -> None:
        """To the dead letters with the reason; `kind` labels the metric (gave up, poison). Raises when the
        transport did not take it."""
        ...


@dataclass(slots=True)
class Link:
    """An open transport: its publisher, and the broker connection when it is RabbitMQ (None over PostgreSQL, where
    the role's own pool carries everything)."""

    publisher: Publisher
    connection: AbstractRobustConnection | None = None

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


async def open_link(settings: Settings, name: str, pool: asyncpg.Pool) -> Link:
    """The transport `settings` choose, opened for a role called `name`, with `pool` its database pool."""
    if settings.transport_name == "postgres":
        from taskmill.transport.postgres import PgPublisher

        return Link(PgPublisher(pool, settings.publish_timeout_s))
    from functools import partial

    from taskmill.broker import AmqpPublisher, connect, consumed
    from taskmill.topology import Names
    from taskmill.transport.routes import Routes

    connection = await connect(settings, name)
    serving = partial(consumed, connection, Names(settings.broker_prefix), settings.publish_timeout_s)
    try:
        return Link(await AmqpPublisher.open(connection, settings, Routes(pool, serving=serving)), connection)
    except BaseException:
        await connection.close()
        raise


def coalesce(runs: Sequence[Outbound], per_message: int) -> list[list[Outbound]]:
    """The messages that carry `runs`: up to `per_message` runs of one type and priority each, in the order they
    came (a dead run alone: it goes to the dead letters)."""
    messages: list[list[Outbound]] = []
    open_by_kind: dict[tuple[str, int], list[Outbound]] = {}
    for run in runs:
        if run.status is RunState.DEAD or per_message <= 1:
            messages.append([run])
            continue
        kind = (run.type, run.priority)
        current = open_by_kind.get(kind)
        if current is None or len(current) >= per_message:
            current = open_by_kind[kind] = []
            messages.append(current)
        current.append(run)
    return messages
