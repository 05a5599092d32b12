"""Queue pressure kept current (SPEC D4, issue 16): the due backlog, the oldest due run, each queue's depth and the
live processors, read every `pressure_interval_s` by the distributor and the capacity role on their own, so a
Prometheus scrape of either role's port sees fresh values with no API request."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from taskmill.logs import described
from taskmill.loops import wait_or_stop
from taskmill.metrics import DUE_BACKLOG, OLDEST_DUE, PROCESSORS_LIVE, QUEUE_DEPTH
from taskmill.settings import Settings
from taskmill.store.pressure import due_backlog
from taskmill.store.processors import LIVE_WITHIN_S, live_count
from taskmill.transport import Link, Publisher, open_link

log = logging.getLogger(__name__)


async def measure(pool: asyncpg.Pool, publisher: Publisher | None) -> None:
    """Reads the pressure once into the gauges; the queue depths only with a transport to ask."""
    backlog = await due_backlog(pool)
    DUE_BACKLOG.set(backlog.runs)
    OLDEST_DUE.set(backlog.oldest_s)
    PROCESSORS_LIVE.set(await live_count(pool, LIVE_WITHIN_S))
    if publisher is not None:
        for queue, depth in (await publisher.queue_depths()).items():
            QUEUE_DEPTH.labels(queue).set(depth)


async def keep_current(pool: asyncpg.Pool, publisher: Publisher | None, interval_s: float, stop: asyncio.Event) -> None:
    """Measures every `interval_s` until `stop`. A failed reading is logged and tried again: gauges are not worth
    stopping a role for."""
    while True:
        try:
            await measure(pool, publisher)
        except Exception as exc:
            log.info("cannot measure the queue pressure: %s", described(exc), extra={"action": "pressure"})
        if await wait_or_stop(stop, interval_s):
            return


async def open_for_depths(settings: Settings, name: str, pool: asyncpg.Pool) -> Link | None:
    """For a role that has no transport of its own (the capacity role): one for the queue depths, or None when it
    cannot be opened within `publish_timeout_s` (the gauges then go without depths; the role's own work never waits
    on the broker). Opened before the role's loops and closed after them, never from inside one: a loop cancelled
    half-way through opening or closing a broker connection can leave it hanging past the role's exit."""
    try:
        async with asyncio.timeout(settings.publish_timeout_s):
            return await open_link(settings, name, pool)
    except Exception as exc:
        log.warning("no queue depths: cannot reach the transport: %s", described(exc), extra={"action": "pressure"})
        return None
