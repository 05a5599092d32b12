"""The processor role: consumes run messages with a prefetch equal to its concurrency."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import asyncpg
from aio_pika.abc import AbstractChannel

from processor.consume import Consumer
from processor.watchdog import Subscription, watch
from taskmill.broker import Publisher, connect
from taskmill.db import is_transient, role_pool
from taskmill.loops import run_loops, unless_stopped, wait_or_stop
from taskmill.settings import Settings
from taskmill.store.processors import leave, register, seen
from taskmill.tasktypes.http import http_client
from taskmill.tasktypes.jail import Jail

log = logging.getLogger(__name__)

# How often a processor tells the database it is alive (GET /health lists those seen within three of these).
HEARTBEAT_S = 10.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    worker = worker_name()
    jail = await asyncio.to_thread(Jail.detect, settings)  # tries the sandbox once, for real
    pool = await role_pool(settings.database_url, max_size=4)
    connection = await connect(settings, "taskmill-processor")
    http = http_client(settings.http_allow_hosts, settings.http_deny_hosts)
    try:
        _say_isolation(jail)
        await register(pool, worker, jail.describe())
        publisher = await Publisher.open(connection, settings)
        consumer = Consumer(settings, pool, publisher, http, jail, worker)
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
                    heartbeat=_heartbeat(pool, worker, stop),
                )
        finally:
            # Stop taking work; what we hold is finished and recorded, or handed back (also when the watchdog
            # gave up, before the error stops the process).
            await subscription.cancel()
            await consumer.drain()
    finally:
        await http.aclose()
        await connection.close()
        try:
            await leave(pool, worker)
        except Exception as exc:  # it ages out of /health by itself
            log.info("could not unregister %s: %s", worker, exc)
        await pool.close()


def _say_isolation(jail: Jail) -> None:
    """The isolation command runs get, at start: loudly when they get none, or are refused."""
    if jail.refused or jail.isolation == "none":
        log.warning("command isolation: %s", jail.describe(), extra={"action": "isolation"})
    else:
        log.info("command isolation: %s", jail.describe(), extra={"action": "isolation"})


async def _heartbeat(pool: asyncpg.Pool, worker: str, stop: asyncio.Event) -> None:
    while not await wait_or_stop(stop, HEARTBEAT_S):
        try:
            await seen(pool, worker)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("heartbeat failed, will retry: %s", exc)


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
