"""The processor role: consumes run messages with a prefetch equal to its concurrency."""

from __future__ import annotations

import asyncio
import os
import socket

import httpx
from aio_pika.abc import AbstractChannel

from processor.consume import Consumer
from taskmill.broker import Publisher, connect
from taskmill.db import create_pool
from taskmill.settings import Settings
from taskmill.topology import declare


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    pool = await create_pool(settings.database_url, max_size=4)
    connection = await connect(settings, "taskmill-processor")
    http = httpx.AsyncClient(follow_redirects=False)
    try:
        publisher = await Publisher.open(connection, settings)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.concurrency)
        queue = (await declare(channel, settings)).work
        consumer = Consumer(settings, pool, publisher, http, worker_name())
        consumer.start()
        tag = await queue.consume(consumer.on_message)
        if until_idle:
            await _wait_idle(channel, queue.name, consumer, stop)
        else:
            await stop.wait()
        await queue.cancel(tag)  # stop taking work; what we hold is finished or handed back
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
