"""The processor role: consumes run messages with a prefetch equal to its concurrency."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from aio_pika.abc import AbstractChannel

from processor.consume import Consumer
from processor.watchdog import Subscription, watch
from taskmill.broker import Publisher, connect
from taskmill.db import role_pool
from taskmill.loops import run_loops, unless_stopped
from taskmill.settings import Settings
from taskmill.tasktypes.http import http_client

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    pool = await role_pool(settings.database_url, max_size=4)
    connection = await connect(settings, "taskmill-processor")
    http = http_client(settings.http_allow_hosts, settings.http_deny_hosts)
    try:
        publisher = await Publisher.open(connection, settings)
        consumer = Consumer(settings, pool, publisher, http, worker_name())
        consumer.start()
        subscription = Subscription(connection, settings, consumer.on_message)
        await subscription.subscribe()
        log.info("processor ready: %d runs at once", settings.concurrency, extra={"action": "ready"})
        try:
            if until_idle:
                await _wait_idle(subscription.channel, subscription.queue.name, consumer, stop)
            else:

                def room() -> bool:
                    return consumer.in_flight < settings.concurrency

                await run_loops(
                    stop,
                    watchdog=watch(subscription, room, settings, stop),
                    failure=unless_stopped(stop, consumer.failed()),
                )
        finally:
            # Stop taking work; what we hold is finished and recorded, or handed back (also when the watchdog
            # gave up, before the error stops the process).
            await subscription.cancel()
            await consumer.drain()
    finally:
        await http.aclose()
        await connection.close()
        await pool.close()


async def _wait_idle(channel: AbstractChannel, queue: str, consumer: Consumer, stop: asyncio.Event) -> None:
    """Returns once the work queue is empty and nothing is in flight, twice in a row 100 ms apart."""
    quiet = 0
    while not stop.is_set() and quiet < 2:
        await asyncio.sleep(0.1)
        # Asked of the raw channel: a robust channel answers a repeated declare from its cache.
        underlay = await channel.get_underlay_channel()
        ready = (await underlay.queue_declare(queue, passive=True)).message_count
        quiet = quiet + 1 if ready == 0 and consumer.in_flight == 0 else 0
        consumer.raise_failure()
