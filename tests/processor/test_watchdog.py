"""The consumer watchdog (processor/watchdog.py) against the real broker, in this process: what it judges a
stopped consumer and what it leaves alone. The scenarios with whole processes are in tests/faults/."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from processor.watchdog import Subscription, watch
from taskmill.broker import connect
from taskmill.settings import Settings
from tests.helpers import wait_until

CHECK_S = 0.3


@pytest.fixture
async def connection(settings: Settings) -> AsyncIterator[AbstractRobustConnection]:
    conn = await connect(settings, "taskmill-watchdog-test")
    async with conn:
        yield conn


async def _publish(subscription: Subscription, count: int) -> None:
    for i in range(count):
        await subscription.channel.default_exchange.publish(
            aio_pika.Message(f"m{i}".encode()), routing_key=subscription.queue.name
        )


async def _watching(subscription: Subscription, room: Callable[[], bool], settings: Settings, seconds: float) -> None:
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(subscription, room, settings, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await watcher


async def test_a_consumer_starved_while_it_has_room_is_subscribed_again(
    settings: Settings, connection: AbstractRobustConnection
) -> None:
    """Deliveries whose acks never reached the broker fill the prefetch window: the broker sends nothing more,
    though the processor, thinking them done, has room. A fresh consumer gets a window of its own."""
    s = settings.model_copy(update={"concurrency": 2, "consumer_check_s": CHECK_S})
    got: list[AbstractIncomingMessage] = []

    async def never_acked(delivery: AbstractIncomingMessage) -> None:
        got.append(delivery)

    subscription = Subscription(connection, s, never_acked)
    await subscription.subscribe()
    await _publish(subscription, 5)

    async def window_full() -> bool:
        return len(got) == 2

    await wait_until(window_full, 10, what="the prefetch window to fill")
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(subscription, lambda: True, s, stop))
    try:

        async def fed_again() -> bool:
            return len(got) >= 4

        await wait_until(fed_again, 10, what="deliveries to a new consumer")
    finally:
        stop.set()
        await watcher
    assert subscription.received == len(got)


async def test_a_consumer_busy_to_its_prefetch_is_not_taken_for_a_stopped_one(
    settings: Settings, connection: AbstractRobustConnection
) -> None:
    s = settings.model_copy(update={"concurrency": 2, "consumer_check_s": CHECK_S})
    got: list[AbstractIncomingMessage] = []

    async def slow(delivery: AbstractIncomingMessage) -> None:
        got.append(delivery)

    subscription = Subscription(connection, s, slow)
    await subscription.subscribe()
    await _publish(subscription, 5)

    async def window_full() -> bool:
        return len(got) == 2

    await wait_until(window_full, 10, what="the prefetch window to fill")
    await _watching(subscription, lambda: False, s, seconds=CHECK_S * 6)  # no room: messages waiting is no fault
    assert len(got) == 2


async def test_a_consumer_that_keeps_up_is_left_alone(settings: Settings, connection: AbstractRobustConnection) -> None:
    s = settings.model_copy(update={"concurrency": 2, "consumer_check_s": CHECK_S})
    subscription = Subscription(connection, s, lambda delivery: delivery.ack())
    await subscription.subscribe()
    tag = subscription._tags
    feeding = asyncio.create_task(_publish(subscription, 200))
    await _watching(subscription, lambda: True, s, seconds=CHECK_S * 6)
    await feeding
    assert subscription._tags == tag  # the same consumer throughout
    assert subscription.received > 0
