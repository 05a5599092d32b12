"""The whole RabbitMQ topology in one place: names, arguments and declaration.

publishers --> exchange <p>.runs (direct, key = task type) --> queue <p>.work --> processors
priority 1-9: key urgent.<type> --> queue <p>.work.urgent --> the same processors, a consumer of its own (the urgent
    lane: a backlog in <p>.work does not hold it up; RabbitMQ 3.x quorum queues have no priorities of their own)
failed attempt --> default exchange --> queue <p>.delay.<ms>.<type> (TTL) --dead-letter--> <p>.runs
gave up / poison / over the delivery limit --> exchange <p>.dead (fanout) --> queue <p>.dead
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from taskmill.handlers import HANDLERS
from taskmill.settings import Settings
from taskmill.tasktypes import BUILTIN
from taskmill.transport.routes import DEDICATED_PREFIX, lane_key

# An idle delay queue is removed this long after its last use; its messages have all expired by then.
_DELAY_QUEUE_IDLE_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str

    @property
    def runs_exchange(self) -> str:
        return f"{self.prefix}.runs"

    @property
    def work_queue(self) -> str:
        return f"{self.prefix}.work"

    @property
    def submit_queue(self) -> str:
        """Requests for runs, from any language (taskmill/submit.py), through the default exchange."""
        return f"{self.prefix}.submit"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    def dedicated_queue(self, types: Sequence[str]) -> str:
        """The queue of processors dedicated to `types` (`--types`): one per set of types."""
        digest = hashlib.sha256(",".join(sorted(types)).encode()).hexdigest()[:12]
        return f"{self.prefix}.only.{digest}"

    @staticmethod
    def urgent(queue: str) -> str:
        """The urgent lane beside a work queue: runs of priority 1-9 go there, and its processors consume both."""
        return f"{queue}.urgent"

    def delay_queue(self, delay_ms: int, task_type: str) -> str:
        return f"{self.prefix}.delay.{delay_ms}.{task_type}"


@dataclass(slots=True)
class Topology:
    names: Names
    runs: AbstractExchange
    dead: AbstractExchange
    work: AbstractQueue
    urgent: AbstractQueue  # the work queue's urgent lane
    dead_letters: AbstractQueue


def work_queue_arguments(settings: Settings, names: Names) -> dict[str, Any]:
    args: dict[str, Any] = {"x-dead-letter-exchange": names.dead_exchange}
    if settings.queue_type == "quorum":
        # The broker counts deliveries; a message that keeps killing its consumer ends in the dead queue.
        args |= {"x-queue-type": "quorum", "x-delivery-limit": settings.delivery_limit}
    else:
        args |= {"x-queue-type": "classic", "x-queue-version": 2}
    return args


async def declare(channel: AbstractChannel, settings: Settings) -> Topology:
    names = Names(settings.broker_prefix)
    runs = await channel.declare_exchange(names.runs_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await channel.declare_exchange(names.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    work, urgent = await _lanes(channel, settings, names, names.work_queue)
    # The built-in types, and the handlers this process registered (a processor's: the bindings stay on the broker,
    # so every distributor's publishes of those types reach the work queue from then on).
    for type_name in (*BUILTIN, *HANDLERS):
        await _bind(runs, work, urgent, type_name)
    dead_letters = await channel.declare_queue(
        names.dead_queue,
        durable=True,
        arguments={"x-queue-type": "quorum"} if settings.queue_type == "quorum" else {},
    )
    await dead_letters.bind(dead)
    return Topology(names, runs, dead, work, urgent, dead_letters)


async def _lanes(
    channel: AbstractChannel, settings: Settings, names: Names, name: str
) -> tuple[AbstractQueue, AbstractQueue]:
    """A work queue and its urgent lane, alike but for their names."""
    arguments = work_queue_arguments(settings, names)
    queue = await channel.declare_queue(name, durable=True, arguments=arguments)
    urgent = await channel.declare_queue(Names.urgent(name), durable=True, arguments=arguments)
    return queue, urgent


async def _bind(runs: AbstractExchange, queue: AbstractQueue, urgent: AbstractQueue, key: str) -> None:
    await queue.bind(runs, routing_key=key)
    await urgent.bind(runs, routing_key=lane_key(key, 9))


async def declare_dedicated(
    channel: AbstractChannel, topology: Topology, settings: Settings, types: Sequence[str]
) -> tuple[AbstractQueue, AbstractQueue]:
    """The queue of processors dedicated to `types` and its urgent lane (beside the topology `declare` made), bound
    to the runs exchange under `only.<type>` (and `urgent.only.<type>`) for each: the routing keys publishers use for
    a type that live dedicated processors serve (taskmill/transport/routes.py)."""
    queue, urgent = await _lanes(channel, settings, topology.names, topology.names.dedicated_queue(types))
    for task_type in types:
        await _bind(topology.runs, queue, urgent, f"{DEDICATED_PREFIX}{task_type}")
    return queue, urgent


async def declare_delay_queue(channel: aiormq.abc.AbstractChannel, names: Names, delay_ms: int, task_type: str) -> str:
    """Declares the queue that holds each message `delay_ms`, then dead-letters it back to the runs exchange under
    its type, and that removes itself when idle; returns its name.

    On a raw channel: a robust one would keep every delay queue it ever declared and declare each of them again
    after every reconnect."""
    name = names.delay_queue(delay_ms, task_type)
    arguments: dict[str, Any] = {
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": names.runs_exchange,
        "x-dead-letter-routing-key": task_type,
        "x-expires": delay_ms + _DELAY_QUEUE_IDLE_MS,
    }
    await channel.queue_declare(name, durable=True, arguments=arguments)
    return name


async def declare_submit(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    """The queue producers publish run requests to (its rejects go to the dead-letter exchange too)."""
    names = Names(settings.broker_prefix)
    arguments: dict[str, Any] = {"x-dead-letter-exchange": names.dead_exchange}
    if settings.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return await channel.declare_queue(names.submit_queue, durable=True, arguments=arguments)


async def delete(channel: AbstractChannel, names: Names) -> None:
    """Removes the work queue and its urgent lane, the submit and dead-letter queues and the exchanges (delay queues
    expire by themselves)."""
    for queue in (names.work_queue, Names.urgent(names.work_queue), names.submit_queue, names.dead_queue):
        await channel.queue_delete(queue)
    for exchange in (names.runs_exchange, names.dead_exchange):
        await channel.exchange_delete(exchange)
