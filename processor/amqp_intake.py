"""Deliveries from RabbitMQ: the work queue's consumer (processor/watchdog.py) and its acks (processor/acks.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import cast

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from processor.acks import CHANNEL_GONE, Acker
from processor.intake import Delivery, Handler
from processor.watchdog import Subscription, watch
from taskmill.broker import probe_queue
from taskmill.logs import described
from taskmill.settings import Settings

log = logging.getLogger(__name__)


class AmqpIntake:
    def __init__(self, connection: AbstractRobustConnection, settings: Settings, types: Sequence[str] = ()) -> None:
        self._connection = connection
        self._settings = settings
        self._types = types
        self._acker = Acker()
        self._subscription: Subscription | None = None

    async def subscribe(self, handler: Handler) -> None:
        async def deliver(delivery: AbstractIncomingMessage) -> None:
            self._acker.received(delivery)
            await handler(delivery)

        self._subscription = Subscription(self._connection, self._settings, deliver, self._types)
        await self._subscription.subscribe()

    async def keep(self, stop: asyncio.Event, room: Callable[[], bool]) -> None:
        assert self._subscription is not None, "not subscribed"
        await watch(self._subscription, room, self._settings, stop)

    async def cancel(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()

    async def ready(self) -> int:
        assert self._subscription is not None, "not subscribed"
        return sum([(await probe_queue(self._connection, queue.name))[0] for queue in self._subscription.queues])

    def done(self, delivery: Delivery) -> None:
        self._acker.done(cast(AbstractIncomingMessage, delivery))

    async def requeue(self, delivery: Delivery) -> None:
        message = cast(AbstractIncomingMessage, delivery)
        try:
            await message.nack(requeue=True)
        except CHANNEL_GONE as exc:  # the broker requeues it itself
            log.info("requeue of delivery %s: %s", message.delivery_tag, described(exc))
        self._acker.settled(message)  # only now: until the nack is out, no multiple ack may reach over it

    async def reject(self, delivery: Delivery, reason: str) -> None:
        """The work queue dead-letters what is rejected (without the reason, which the log has)."""
        message = cast(AbstractIncomingMessage, delivery)
        try:
            await message.reject(requeue=False)
        except CHANNEL_GONE as exc:
            # The channel closed: the broker hands the message out again, and it is read again.
            log.info("reject of delivery %s: %s", message.delivery_tag, described(exc))
        self._acker.settled(message)

    async def close(self) -> None:
        await self._acker.close()
