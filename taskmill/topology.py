"""The whole RabbitMQ topology in one place: names, arguments and declaration.

publishers --> exchange <p>.runs (direct, key = task type) --> queue <p>.work --> processors
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
from taskmill.transport.routes import DEDICATED_PREFIX

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

    def delay_queue(self, delay_ms: int, task_type: str) -> str:
        return f"{self.prefix}.delay.{delay_ms}.{task_type}"


@dataclass(slots=True)
class Topology:
    names: Names
    runs: AbstractExchange
    dead: AbstractExchange
    work: AbstractQueue
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
    work = await channel.declare_queue(names.work_queue, durable=True, arguments=work_queue_arguments(settings, names))
    # The built-in types, and the handlers this process registered (a processor's: the bindings stay on the broker,
    # so every distributor's publishes of those types reach the work queue from then on).
    for type_name in (*BUILTIN, *HANDLERS):
        await work.bind(runs, routing_key=type_name)
    dead_letters = await channel.declare_queue(
        names.dead_queue,
        durable=True,
        arguments={"x-queue-type": "quorum"} if settings.queue_type == "quorum" else {},
    )
    await dead_letters.bind(dead)
    return Topology(names, runs, dead, work, dead_letters)


async def declare_dedicated(
    channel: AbstractChannel, topology: Topology, settings: Settings, types: Sequence[str]
) -> AbstractQueue:
    """The queue of processors dedicated to `types` (beside the topology `declare` made), bound to the runs exchange
    under `only.<type>` for each: the routing key publishers use for a type that live dedicated processors serve
    (taskmill/transport/routes.py)."""
    names = topology.names
    queue = await channel.declare_queue(
        names.dedicated_queue(types), durable=True, arguments=work_queue_arguments(settings, names)
    )
    for task_type in types:
        await queue.bind(topology.runs, routing_key=f"{DEDICATED_PREFIX}{task_type}")
    return queue


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
    """Removes the work, submit and dead-letter queues and the exchanges (delay queues expire by themselves)."""
    for queue in (names.work_queue, names.submit_queue, names.dead_queue):
        await channel.queue_delete(queue)
    for exchange in (names.runs_exchange, names.dead_exchange):
        await channel.exchange_delete(exchange)
