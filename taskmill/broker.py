"""The broker connection and a confirmed publisher shared by every role that publishes runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from taskmill.messages import amqp_message, properties
from taskmill.metrics import DEAD_LETTERED, PUBLISH_FAILED, PUBLISHED
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import Outbound
from taskmill.tls import tls_context
from taskmill.topology import Topology, declare, declare_delay_queue

log = logging.getLogger(__name__)


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


async def confirmed_channel(connection: AbstractRobustConnection) -> AbstractChannel:
    # Confirms tell us the broker has the message; returns raise when it reached no queue.
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


@dataclass(slots=True)
class Publisher:
    """Publishes run messages with confirms, many at once: the confirms arrive pipelined, not one round trip each."""

    channel: AbstractChannel
    topology: Topology
    timeout_s: float

    @classmethod
    async def open(cls, connection: AbstractRobustConnection, settings: Settings) -> Publisher:
        channel = await confirmed_channel(connection)
        return cls(channel, await declare(channel, settings), settings.publish_timeout_s)

    async def publish_runs(self, runs: Sequence[Outbound]) -> list[bool]:
        """Publishes each run (dead ones to the dead-letter exchange); True where the broker confirmed it.

        Goes to the raw channel: frames are queued without waiting for each write, and one aio-pika Message
        per run is not built. Confirms (and returns, which raise) still come back per message.
        """
        if not runs:
            return []
        try:
            # While the connection is down this waits for the reconnect: bounded, so the runs revert instead.
            async with asyncio.timeout(self.timeout_s):
                channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
        except Exception as exc:
            log.warning("cannot publish %d runs: %s", len(runs), exc)
            return [False] * len(runs)
        runs_exchange = self.topology.names.runs_exchange
        # One deadline for the batch, not a timer per message; what is not confirmed by then counts as failed.
        publishes = [
            asyncio.ensure_future(
                self.publish_dead(run.body, run.run_id, "processor lost on the last attempt")
                if run.status is RunState.DEAD
                else channel.basic_publish(
                    run.body,
                    exchange=runs_exchange,
                    routing_key=run.type,
                    properties=properties(run.run_id),
                    mandatory=True,
                    wait=False,
                )
            )
            for run in runs
        ]
        await asyncio.wait(publishes, timeout=self.timeout_s)
        for publish in publishes:
            publish.cancel()  # a no-op on those that finished
        results = await asyncio.gather(*publishes, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        PUBLISHED.inc(len(runs) - len(failed))
        PUBLISH_FAILED.inc(len(failed))
        if failed:
            log.warning("%d of %d publishes failed: %r", len(failed), len(runs), failed[0])
        return [not isinstance(r, BaseException) for r in results]

    async def publish_delayed(self, body: bytes, run_id: int, task_type: str, delay_ms: int) -> None:
        """Into the delay queue of `delay_ms` for the type, declared first (it expires when idle). TimeoutError
        after `publish_timeout_s`, also while the connection is down."""
        async with asyncio.timeout(self.timeout_s):
            channel = await self.channel.get_underlay_channel()
            queue = await declare_delay_queue(channel, self.topology.names, delay_ms, task_type)
            await self.channel.default_exchange.publish(amqp_message(body, run_id), routing_key=queue, mandatory=True)

    async def publish_dead(self, body: bytes, run_id: int | None, reason: str, *, kind: str = "gave up") -> None:
        """To the dead-letter queue with the reason in a header; `kind` labels the metric (gave up, poison).
        TimeoutError after `publish_timeout_s`, also while the connection is down."""
        message = amqp_message(body, run_id or 0, headers={"x-taskmill-reason": reason[:1000]})
        DEAD_LETTERED.labels(kind).inc()
        async with asyncio.timeout(self.timeout_s):
            await self.topology.dead.publish(message, routing_key="", mandatory=True)
