"""The processor's subscription to the work queue, and the watchdog that notices when it silently stopped.

aio-pika restores a consumer after a reconnect and, when the broker cancels it (its queue was deleted), declares
the queue again and consumes anew. The watchdog covers what that leaves out: a recovery that cannot succeed by
itself (the queue came back without the exchange it is bound to, so every attempt to bind it again fails) and a
consumer that stopped without any signal (it looks registered, yet nothing reaches it). Every `consumer_check_s`
it asks:

- is our consumer tag still registered on the channel? (the library forgets one the broker cancelled)
- were messages ready in the work queue, at this check and the one before, while we had room for more, and did
  none reach us in between?

A consumer found wanting at two checks in a row (the library gets one period to recover by itself) is subscribed
again, in this process: the whole topology declared anew, then a fresh consumer on the same channel (a new one
if that closed). The runs in flight carry on and are recorded and acked as usual; exiting instead would leave
them to the rescuer after their lease and would need a supervisor. Only when subscribing again fails three times
running does the watchdog raise: the processor then finishes what it holds and stops with an error (exit 1), for
its supervisor to start a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel, AbstractRobustConnection

from taskmill.broker import probe_queue
from taskmill.logs import described
from taskmill.loops import wait_or_stop
from taskmill.metrics import CONSUMER_RESUBSCRIBED
from taskmill.settings import Settings
from taskmill.topology import declare, declare_dedicated

log = logging.getLogger(__name__)

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]

# Checks found wanting in a row before acting, and failed re-subscriptions in a row before giving up.
STRIKES = 2
ATTEMPTS = 3


def _reraise_if_cancelled() -> None:
    """aiormq hands its own internal cancellations (a connection torn down under a call) to the caller as
    CancelledError: only a cancellation of this task itself is passed on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ConsumerLost(RuntimeError):
    """The consumer could not be subscribed again: the processor stops so that a fresh one replaces it."""


class Subscription:
    """Consumers of the work queue and of its urgent lane, each with a prefetch of `concurrency` (per consumer: the
    urgent lane's runs reach a processor whose prefetch the backlog fills, and take its next free slot), counting
    what reaches them."""

    def __init__(
        self, connection: AbstractRobustConnection, settings: Settings, handler: Handler, types: Sequence[str] = ()
    ) -> None:
        self._connection = connection
        self._settings = settings
        self._handler = handler
        self._types = list(types)  # dedicated to these (their own queue), or every type (the work queue)
        self._channel: AbstractRobustChannel | None = None
        self._queues: list[AbstractQueue] = []
        self._tags: list[str] = []
        self.received = 0
        # (deliveries received, messages ready, room for more) at the previous check
        self._last: tuple[int, int, bool] | None = None

    @property
    def channel(self) -> AbstractRobustChannel:
        assert self._channel is not None, "not subscribed"
        return self._channel

    @property
    def queues(self) -> list[AbstractQueue]:
        """The queue consumed and its urgent lane."""
        assert self._queues, "not subscribed"
        return self._queues

    @property
    def queue(self) -> AbstractQueue:
        """The queue consumed (the work queue, or the dedicated processors' own)."""
        return self.queues[0]

    async def subscribe(self) -> None:
        """Declares the topology and consumes (on a new channel if there is none or it closed)."""
        if self._channel is not None and self._channel.is_closed:
            # Given up for good, so the library stops trying to reopen it.
            with contextlib.suppress(Exception):
                await self._channel.close()
            self._channel = None
        if self._channel is None:
            self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._settings.concurrency)
        topology = await declare(self._channel, self._settings)
        if self._types:
            queue, urgent = await declare_dedicated(self._channel, topology, self._settings, self._types)
        else:
            queue, urgent = topology.work, topology.urgent
        self._queues = [queue, urgent]
        self._tags = [await q.consume(self._deliver) for q in self._queues]
        self._last = None

    async def cancel(self) -> None:
        """Stops taking work (also from aio-pika's list of consumers to restore); deliveries held stay unacked."""
        tags, self._tags = self._tags, []
        for queue, tag in zip(self._queues, tags, strict=True):
            try:
                async with asyncio.timeout(self._settings.publish_timeout_s):
                    await queue.cancel(tag)
            except Exception as exc:  # the channel is gone: so is the consumer
                log.info("cancelling consumer %s: %s", tag, described(exc))

    async def resubscribe(self) -> None:
        await self.cancel()
        try:
            async with asyncio.timeout(self._settings.publish_timeout_s * 3):
                await self.subscribe()
        except asyncio.CancelledError:
            _reraise_if_cancelled()
            raise ConnectionError("the broker connection went while subscribing") from None

    async def _deliver(self, delivery: AbstractIncomingMessage) -> None:
        self.received += 1
        await self._handler(delivery)

    async def problem(self, room: bool) -> str | None:
        """What is wrong with the consumer now, or None. `room`: the processor could take more deliveries.

        Only what the broker plainly says counts: the channel closed, the tag gone from a channel restored and
        open, the work queue missing, messages waiting and none coming. A connection that is down, or too slow to
        answer, is not judged: the heartbeats notice a dead one and the library reconnects it (and then restores
        the consumer).
        """
        if not self._connection.connected.is_set():
            self._last = None
            return None
        if self.channel.is_closed:  # closed by the broker, and the library's reopening failed (or is under way)
            self._last = None
            return "its channel is closed"
        try:
            async with asyncio.timeout(self._settings.publish_timeout_s):
                await self.channel.ready()  # restored after a reconnect, its consumers with it
                underlay = cast(aiormq.Channel, await self.channel.get_underlay_channel())
                registered = bool(self._tags) and all(tag in underlay.consumers for tag in self._tags)
                ready = await self._ready()
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._last = None
            return "the work queue does not exist"
        except Exception as exc:
            log.info("consumer check skipped: %s", described(exc))
            self._last = None
            return None
        except asyncio.CancelledError:
            _reraise_if_cancelled()
            self._last = None
            return None
        previous, self._last = self._last, (self.received, ready, room)
        if not registered:
            return "a consumer tag of it is no longer registered on the channel"
        if previous is not None and previous[2] and room and previous[1] and ready and previous[0] == self.received:
            return f"{ready} messages wait in the queue and none reached it since the last check"
        return None

    async def _ready(self) -> int:
        """Messages ready in the work queue and its urgent lane."""
        return sum([(await probe_queue(self._connection, queue.name))[0] for queue in self.queues])


async def watch(subscription: Subscription, room: Callable[[], bool], settings: Settings, stop: asyncio.Event) -> None:
    """Checks the consumer every `consumer_check_s` until `stop`; see the module docstring. Raises ConsumerLost."""
    strikes = failures = 0
    while not await wait_or_stop(stop, settings.consumer_check_s):
        problem = await subscription.problem(room())
        if problem is None:
            strikes = 0
            continue
        strikes += 1
        log.warning("consumer check: %s", problem, extra={"action": "consumer_check"})
        if strikes < STRIKES:
            continue
        log.error("the consumer stopped (%s): subscribing again", problem, extra={"action": "resubscribe"})
        try:
            await subscription.resubscribe()
        except Exception as exc:
            failures += 1
            log.error(
                "subscribing again failed (%d of %d): %s",
                failures,
                ATTEMPTS,
                described(exc),
                extra={"action": "resubscribe"},
            )
            if failures >= ATTEMPTS:
                raise ConsumerLost(f"the work queue consumer cannot be restored: {exc}") from exc
            continue
        CONSUMER_RESUBSCRIBED.inc()
        strikes = failures = 0
