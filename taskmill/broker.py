"""The broker connection and a confirmed publisher shared by every role that publishes runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from taskmill.logs import described
from taskmill.messages import amqp_message, batch_body, properties
from taskmill.metrics import DEAD_LETTERED, PUBLISH_FAILED, PUBLISHED
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import Outbound
from taskmill.tls import tls_context
from taskmill.topology import Names, Topology, declare, declare_delay_queue
from taskmill.transport import coalesce
from taskmill.transport.routes import Routes, lane_key

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a call on the broker raises when its connection went or the broker closed it (a restart, or RabbitMQ 3.10's
# INTERNAL_ERROR when replicas declare one quorum queue at once). A channel error (a queue declared with other
# arguments) is not among them.
_LOST = (aiormq.exceptions.AMQPConnectionError, aio_pika.exceptions.ChannelInvalidStateError, ConnectionError)


# Bare RuntimeErrors that say the same: aiormq's "<Connection ...> closed" until the robust connection has noticed,
# and aio-pika's "Connection was not opened" while it is reconnecting (its transport is None for that while).
_LOST_MESSAGES = (" closed", "Connection was not opened")


def connection_lost(exc: BaseException) -> bool:
    """Whether a broker call failed because its connection went: the robust connection comes back by itself, so the
    call is worth trying again."""
    if isinstance(exc, _LOST):
        return True
    return isinstance(exc, RuntimeError) and str(exc).endswith(_LOST_MESSAGES)


async def on_channel(
    connection: AbstractRobustConnection,
    open_channel: Callable[[AbstractRobustConnection], Awaitable[AbstractChannel]],
    use: Callable[[AbstractChannel], Awaitable[T]],
    again: Callable[[Exception], Awaitable[bool]],
) -> tuple[AbstractChannel, T] | None:
    """A channel `open_channel` opens and what `use` made on it (a declared queue, a topology). While the broker
    connection is lost (`connection_lost`) the channel is closed, else the robust connection would open it again on
    reconnecting, and `again(exc)` decides: True tries once more, False gives up (None); it may raise instead."""
    while True:
        channel: AbstractChannel | None = None
        try:
            channel = await open_channel(connection)
            return channel, await use(channel)
        except Exception as exc:
            if not connection_lost(exc):
                raise
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()
            if not await again(exc):
                return None


_DECLARE_PAUSES_S = (0.5, 1.0, 2.0, 4.0)


async def connect(settings: Settings, name: str) -> AbstractRobustConnection:
    """A connection that reconnects by itself and restores its channels, QoS, queues and consumers.

    Heartbeats are what reveal a broker that vanished without closing the TCP connection (a dead host, a
    silent network): without them a blackholed connection is noticed only by the kernel, after many minutes.
    aio-pika tries a lost connection again every `amqp_reconnect_s` (a fixed pause, not a growing one: a
    connection attempt is cheap for the broker, and a fixed pause brings the roles back soon after it is).
    `amqp_heartbeat_s` overrides a `heartbeat` in AMQP_URL. An amqps:// URL connects over TLS (`tls_context`); the
    context is made once, so every reconnect verifies the broker the same way.
    """
    return await aio_pika.connect_robust(
        settings.amqp_url,
        client_properties={"connection_name": name},
        heartbeat=settings.amqp_heartbeat_s,
        reconnect_interval=settings.amqp_reconnect_s,
        ssl_context=tls_context(settings),
    )


async def probe_queue(connection: AbstractRobustConnection, name: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue, asked on a raw channel of its own: a passive declare of a missing
    queue closes the channel it is asked on (aiormq.exceptions.ChannelNotFoundEntity), and a robust channel would
    then declare its queues again when it reopened, the queue gone on purpose among them."""
    transport = connection.transport
    if transport is None:
        raise ConnectionError("not connected")
    probe = await transport.connection.channel(publisher_confirms=False)
    try:
        declared = await probe.queue_declare(name, passive=True)
    finally:
        if not probe.is_closed:
            await probe.close()
    return int(declared.message_count or 0), int(declared.consumer_count or 0)


async def consumed(
    connection: AbstractRobustConnection, names: Names, timeout_s: float, found: dict[str, list[str]]
) -> dict[str, list[str]]:
    """Of `found` (live dedicated processors by worker), those whose queue has a consumer: the broker drops the
    consumers of a processor killed as soon as its connection closes, long before its row stops looking live. A
    queue not declared yet has none; one that cannot be asked about within `timeout_s` (the broker is away)
    counts as consumed, as its rows say."""
    consumers: dict[tuple[str, ...], int] = {}
    try:
        async with asyncio.timeout(timeout_s):
            for types in {tuple(sorted(types)) for types in found.values()}:
                try:
                    _, consumers[types] = await probe_queue(connection, names.dedicated_queue(types))
                except aiormq.exceptions.ChannelNotFoundEntity:
                    consumers[types] = 0
    except Exception as exc:
        log.info("cannot count the consumers of the dedicated processors' queues: %s", described(exc))
    return {worker: types for worker, types in found.items() if consumers.get(tuple(sorted(types)), 1) > 0}


async def queue_depths(
    connection: AbstractRobustConnection, names: Names, type_sets: Iterable[Sequence[str]]
) -> dict[str, int]:
    """Messages ready in the work queue, its urgent lane, the dead letters, and the queues (and lanes) of the
    processors dedicated to each of `type_sets`, by name without the prefix. A queue not declared yet (a dedicated
    processor's before its first run) holds nothing and is left out."""
    queues = [names.work_queue, Names.urgent(names.work_queue), names.dead_queue]
    for types in type_sets:
        queues += [names.dedicated_queue(types), Names.urgent(names.dedicated_queue(types))]
    depths: dict[str, int] = {}
    for queue in queues:
        try:
            depths[queue.removeprefix(f"{names.prefix}.")], _ = await probe_queue(connection, queue)
        except aiormq.exceptions.ChannelNotFoundEntity:
            continue
    return depths


async def confirmed_channel(connection: AbstractRobustConnection) -> AbstractChannel:
    # Confirms tell us the broker has the message; returns raise when it reached no queue.
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


@dataclass(slots=True)
class AmqpPublisher:
    """Publishes run messages to RabbitMQ with confirms, many at once: the confirms arrive pipelined, not one round
    trip each."""

    channel: AbstractChannel
    topology: Topology
    timeout_s: float
    connection: AbstractRobustConnection
    routes: Routes | None = None  # None: every type to the general work queue

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, settings: Settings, routes: Routes | None = None
    ) -> AmqpPublisher:
        # A role starting beside its replicas may have its connection closed while it declares (`connection_lost`):
        # a few tries over some seconds, then the error, for the role to stop on as a broker it cannot reach.
        pauses = iter(_DECLARE_PAUSES_S)

        async def again(exc: Exception) -> bool:
            pause_s = next(pauses, None)
            if pause_s is None:
                raise exc
            log.warning("declaring the queues failed, will retry in %.1f s: %s", pause_s, described(exc))
            await asyncio.sleep(pause_s)
            return True

        opened = await on_channel(connection, confirmed_channel, lambda channel: declare(channel, settings), again)
        assert opened is not None  # `again` raises rather than give up
        channel, topology = opened
        return cls(channel, topology, settings.publish_timeout_s, connection, routes)

    async def _routing_key(self, task_type: str, priority: int) -> str:
        if self.routes is None:
            return lane_key(task_type, priority)
        return await self.routes.routing_key(task_type, priority)

    async def publish_runs(self, runs: Sequence[Outbound], per_message: int = 1) -> list[bool]:
        """Publishes the runs, up to `per_message` of one type in a message (dead ones alone, to the dead-letter
        exchange); True where the broker confirmed the message that carried the run.

        Goes to the raw channel: frames are queued without waiting for each write, and no aio-pika Message is
        built. Confirms (and returns, which raise) come back per message.
        """
        if not runs:
            return []
        try:
            # While the connection is down this waits for the reconnect: bounded, so the runs revert instead.
            async with asyncio.timeout(self.timeout_s):
                channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
        except Exception as exc:
            log.warning("cannot publish %d runs: %s", len(runs), described(exc))
            return [False] * len(runs)
        messages = coalesce(runs, per_message)
        # One deadline for the batch, not a timer per message; what is not confirmed by then counts as failed.
        publishes = [asyncio.ensure_future(self._publish(channel, message)) for message in messages]
        await asyncio.wait(publishes, timeout=self.timeout_s)
        for publish in publishes:
            publish.cancel()  # a no-op on those that finished
        results = await asyncio.gather(*publishes, return_exceptions=True)
        confirmed = {
            run.run_id
            for message, result in zip(messages, results, strict=True)
            if not isinstance(result, BaseException)
            for run in message
        }
        failed = [r for r in results if isinstance(r, BaseException)]
        PUBLISHED.inc(len(confirmed))
        PUBLISH_FAILED.inc(len(runs) - len(confirmed))
        if failed:
            log.warning("%d of %d publishes failed: %r", len(failed), len(messages), failed[0])
        return [run.run_id in confirmed for run in runs]

    async def _publish(self, channel: aiormq.Channel, runs: list[Outbound]) -> None:
        first = runs[0]
        if first.status is RunState.DEAD:
            await self.publish_dead(first.body, first.run_id, first.reason or "processor lost on the last attempt")
            return
        headers: dict[str, Any] | None
        if len(runs) == 1:
            # The context the run's execution continues (its body has it too, as every run of a batch does).
            body, headers = first.body, {"traceparent": first.traceparent} if first.traceparent else None
        else:
            body, headers = batch_body([run.body for run in runs]), {"x-taskmill-runs": len(runs)}
        await channel.basic_publish(
            body,
            exchange=self.topology.names.runs_exchange,
            routing_key=await self._routing_key(first.type, first.priority),
            properties=properties(first.run_id, headers),
            mandatory=True,
            wait=False,
        )

    async def consumers(self) -> int:
        """Processors consuming the work queue now (for how many runs to put in a message)."""
        async with asyncio.timeout(self.timeout_s):
            _, consumers = await probe_queue(self.connection, self.topology.names.work_queue)
        return consumers

    async def queue_depths(self) -> dict[str, int]:
        """The depths `queue_depths` (the function) reads, with the dedicated processors' type sets of `routes`."""
        type_sets = await self.routes.type_sets() if self.routes is not None else []
        async with asyncio.timeout(self.timeout_s):
            return await queue_depths(self.connection, self.topology.names, type_sets)

    async def publish_delayed(self, body: bytes, run_id: int, task_type: str, delay_ms: int, priority: int = 0) -> None:
        """Into the delay queue of `delay_ms` for the type, declared first (it expires when idle). TimeoutError
        after `publish_timeout_s`, also while the connection is down."""
        async with asyncio.timeout(self.timeout_s):
            channel = await self.channel.get_underlay_channel()
            # Named by, and dead-lettering with, the routing key: a dedicated type's retry returns to its processors.
            key = await self._routing_key(task_type, priority)
            queue = await declare_delay_queue(channel, self.topology.names, delay_ms, key)
            await self.channel.default_exchange.publish(amqp_message(body, run_id), routing_key=queue, mandatory=True)

    async def forward(self, body: bytes, run_id: int, task_type: str, priority: int = 0) -> None:
        """To the runs exchange under its type, as the distributor publishes. TimeoutError after
        `publish_timeout_s`, also while the connection is down."""
        async with asyncio.timeout(self.timeout_s):
            key = await self._routing_key(task_type, priority)
            await self.topology.runs.publish(amqp_message(body, run_id), routing_key=key, mandatory=True)

    async def publish_dead(self, body: bytes, run_id: int | None, reason: str, *, kind: str = "gave up") -> None:
        """To the dead-letter queue with the reason in a header; `kind` labels the metric (gave up, poison).
        TimeoutError after `publish_timeout_s`, also while the connection is down."""
        message = amqp_message(body, run_id or 0, headers={"x-taskmill-reason": reason[:1000]})
        DEAD_LETTERED.labels(kind).inc()
        async with asyncio.timeout(self.timeout_s):
            await self.topology.dead.publish(message, routing_key="", mandatory=True)
