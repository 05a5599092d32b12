"""Over RabbitMQ: runs waiting in a queue no processor consumes, moved to where their type is routed now.

A run's queue is chosen when it is published (taskmill/transport/routes.py): its type's dedicated processors' queue
while they are at work, else the general work queue. Routing changes leave runs behind:

- in the queue of dedicated processors that are all gone (stopped, or killed: the broker drops their consumers with
  their connection, while their rows still look live for 30 s): the runs published there before, the retries its
  delay queues bring back later, those a publisher sent by a view up to two seconds old;
- in the general work queue while no processor serving every type consumes it: runs of types that dedicated
  processors serve now (published before those came, or by an older view).

Every REROUTE_S each distributor looks at those queues (the lanes of each: the urgent one is a queue of its own).
From each one that has messages ready and no consumer, or only consumers of processors that are stopping (they
left the `processors` table when they stopped taking work, and finish their runs; a quorum queue counts their
consumer until they have acked their last delivery), it takes the messages (basic.get), publishes each anew to the
routing key of its type and priority now (confirmed, mandatory) and acks it only then: a distributor that dies in
between leaves a duplicate, which the run's own state drops (processor/claim.py), never a loss. A publish that
fails puts its message back (nack) and ends the pass until the next look.

The queue of a gone set of processors is emptied: none of its messages routes there now. The general work queue
is not only holding runs to move: a message whose type still routes there goes back to its end, published anew
(the order of what stays changes, in a queue nobody takes from; a requeue would instead count towards a quorum
queue's delivery limit). So a pass over it takes at most GENERAL_PASS messages, and passes that moved nothing come
at growing intervals (up to MAX_GENERAL_WAIT_S) until the routes change or one moves something.

No leader: the replicas may pass over a queue at once, and each message is taken by one of them. A message that is
not a run message is dead-lettered, as a processor would have done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aio_pika
import aiormq
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue

from taskmill.broker import AmqpPublisher, confirmed_channel, probe_queue
from taskmill.db import is_transient
from taskmill.logs import described
from taskmill.loops import wait_or_stop
from taskmill.messages import route_of
from taskmill.metrics import DEAD_LETTERED, REROUTED
from taskmill.store.processors import LIVE_WITHIN_S, fleet
from taskmill.topology import Names
from taskmill.transport.routes import Routes, lane_key

log = logging.getLogger(__name__)

REROUTE_S = 1.0
# What a sweep may meet while the broker is away or going (the database's: taskmill.db.is_transient).
_BROKER_AWAY = (aiormq.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError, ConnectionError)
# Messages taken and published at once in a pass.
BATCH = 100
# At most this many messages of the general work queue are looked at in one pass.
GENERAL_PASS = 1000
MAX_GENERAL_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class _Pass:
    """The last pass over a lane of the general work queue: the dedicated types then, when the next may come."""

    dedicated: frozenset[str]
    next_at: float
    wait_s: float


@dataclass(frozen=True, slots=True)
class _Lane:
    name: str
    general: bool  # a lane of the general work queue (else of a set of dedicated processors not at work)
    # No processor it is for is live: a consumer left on it is one stopping, which stopped taking work but holds
    # its deliveries until it has finished their runs (a quorum queue counts it until then).
    leaving: bool


class Rerouter:
    def __init__(self, pool: asyncpg.Pool, publisher: AmqpPublisher) -> None:
        assert publisher.routes is not None, "a publisher that routes by type"
        self._pool = pool
        self._publisher = publisher
        self._routes: Routes = publisher.routes
        self._names: Names = publisher.topology.names
        self._passes: dict[str, _Pass] = {}

    async def keep(self, stop: asyncio.Event) -> None:
        """Sweeps every REROUTE_S until `stop`; a failed sweep is tried again at the next."""
        while not await wait_or_stop(stop, REROUTE_S):
            try:
                await self.sweep()
            except asyncio.CancelledError:
                # aiormq hands a call torn down with its connection to the caller as a cancellation.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.warning("the broker connection went during a sweep", extra={"action": "reroute"})
            except Exception as exc:
                if not is_transient(exc) and not isinstance(exc, _BROKER_AWAY):
                    raise
                log.warning(
                    "moving runs out of queues without consumers failed: %s",
                    described(exc),
                    extra={"action": "reroute"},
                )

    async def sweep(self) -> int:
        """One look at every queue that may hold runs nobody takes; returns how many messages it moved elsewhere."""
        dedicated = await self._routes.refresh()
        moved = 0
        for lane in await self._lanes(dedicated):
            try:
                async with asyncio.timeout(self._publisher.timeout_s):
                    ready, consumers = await probe_queue(self._publisher.connection, lane.name)
            except aiormq.exceptions.ChannelNotFoundEntity:
                continue  # never declared (a set whose processors never took work), or deleted
            if not ready or (consumers and not lane.leaving):
                self._passes.pop(lane.name, None)
                continue
            if lane.general and not self._due(lane.name, dedicated):
                continue
            here, back = await self._move(lane, min(ready, GENERAL_PASS) if lane.general else ready)
            moved += here
            if lane.general:
                self._passed(lane.name, dedicated, here)
            if here:
                REROUTED.labels("work" if lane.general else "dedicated").inc(here)
                log.info(
                    "moved %d messages from %s, which no processor consumes, to where their types go now%s",
                    here,
                    lane.name,
                    f" ({back} stay there)" if back else "",
                    extra={"action": "reroute"},
                )
        return moved

    async def _lanes(self, dedicated: frozenset[str]) -> list[_Lane]:
        """The general work queue's lanes while some types go elsewhere, and those of every set of types that
        dedicated processors of the last day served and that none at work serves now."""
        names = self._names
        live = await fleet(self._pool, LIVE_WITHIN_S)
        lanes = []
        if dedicated:
            leaving = not live.get(None, False)
            lanes += [_Lane(q, True, leaving) for q in (names.work_queue, Names.urgent(names.work_queue))]
        serving = {tuple(types) for types in await self._routes.type_sets()}
        for types, seen in live.items():
            if types is not None and types not in serving:
                queue = names.dedicated_queue(types)
                lanes += [_Lane(queue, False, not seen), _Lane(Names.urgent(queue), False, not seen)]
        return lanes

    def _due(self, name: str, dedicated: frozenset[str]) -> bool:
        last = self._passes.get(name)
        return last is None or last.dedicated != dedicated or time.monotonic() >= last.next_at

    def _passed(self, name: str, dedicated: frozenset[str], moved: int) -> None:
        last = self._passes.get(name)
        fresh = moved or last is None or last.dedicated != dedicated
        wait_s = REROUTE_S if fresh or last is None else min(2 * last.wait_s, MAX_GENERAL_WAIT_S)
        self._passes[name] = _Pass(dedicated, time.monotonic() + wait_s, wait_s)

    async def _move(self, lane: _Lane, limit: int) -> tuple[int, int]:
        """Takes up to `limit` messages from the lane and publishes each where its type routes now; (how many went
        elsewhere, how many went back to the lane's end). What is taken and not settled goes back to the queue
        when the channel closes."""
        channel = await confirmed_channel(self._publisher.connection)
        moved = back = taken = 0
        try:
            queue = await channel.get_queue(lane.name, ensure=False)
            runs = await channel.get_exchange(self._names.runs_exchange, ensure=False)
            dead = await channel.get_exchange(self._names.dead_exchange, ensure=False)
            while taken < limit:
                async with asyncio.timeout(self._publisher.timeout_s):
                    batch = await _take(queue, min(BATCH, limit - taken))
                    if not batch:
                        break
                    taken += len(batch)
                    sent = await asyncio.gather(
                        *(self._forward(message, lane, runs, dead) for message in batch), return_exceptions=True
                    )
                    failed = await _settle(batch, sent)
                moved += sum(1 for went in sent if went is True)
                back += sum(1 for went in sent if went is False)
                if failed is not None:
                    log.warning("moving a message out of %s failed: %r", lane.name, failed, extra={"action": "reroute"})
                    break
        finally:
            await _close(channel)
        return moved, back

    async def _forward(
        self, message: AbstractIncomingMessage, lane: _Lane, runs: AbstractExchange, dead: AbstractExchange
    ) -> bool:
        """Publishes `message` anew where its type routes now; True when that is another queue than `lane`."""
        route = route_of(message.body)
        if route is None:
            reason = f"not a run message (found in {lane.name}, which no processor consumes)"
            await dead.publish(_copy(message, reason), routing_key="", mandatory=True)
            DEAD_LETTERED.labels("poison").inc()
            return True
        task_type, priority = route
        key = await self._routes.routing_key(task_type, priority)
        await runs.publish(_copy(message), routing_key=key, mandatory=True)
        return not (lane.general and key == lane_key(task_type, priority))


async def _take(queue: AbstractQueue, n: int) -> list[AbstractIncomingMessage]:
    taken: list[AbstractIncomingMessage] = []
    while len(taken) < n and (message := await queue.get(no_ack=False, fail=False)) is not None:
        taken.append(message)
    return taken


async def _settle(batch: list[AbstractIncomingMessage], sent: list[bool | BaseException]) -> BaseException | None:
    """Acks each message whose copy the broker confirmed, puts back the others; the first failure, if any."""
    failed: BaseException | None = None
    for message, went in zip(batch, sent, strict=True):
        if isinstance(went, BaseException):
            failed = failed or went
            await message.nack(requeue=True)
        else:
            await message.ack()
    return failed


def _copy(message: AbstractIncomingMessage, reason: str | None = None) -> aio_pika.Message:
    """The message as a publisher made it: body, id, type, our headers; not those the broker added (x-death, a
    quorum queue's x-delivery-count). `reason`: a dead letter's."""
    headers = {
        k: v for k, v in (message.headers or {}).items() if k.startswith("x-taskmill-") or not k.startswith("x-")
    }
    if reason is not None:
        headers["x-taskmill-reason"] = reason
    return aio_pika.Message(
        message.body,
        message_id=message.message_id,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers,
    )


async def _close(channel: AbstractChannel) -> None:
    try:
        await channel.close()
    except Exception as exc:  # gone with the connection: the broker puts back what it held
        log.info("closing the rerouting channel: %s", described(exc))
