"""The scheduler role: materializes runs every interval, and at once when a task changes."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg

from scheduler.materialize import materialize
from taskmill.db import create_pool
from taskmill.settings import Settings
from taskmill.wakeup import Wakeup

log = logging.getLogger(__name__)


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        async with Wakeup(settings.database_url, "taskmill_tasks") as wakeup:
            while not stop.is_set():
                try:
                    inserted = await materialize(pool, settings, datetime.now(UTC))
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("materialization failed, will retry: %s", exc, extra={"action": "materialize"})
                    inserted = 0
                if inserted:
                    log.info("materialized %d runs", inserted, extra={"action": "materialize"})
                if until_idle:
                    return
                await _wait(wakeup, stop, settings.scheduler_interval_s)
    finally:
        await pool.close()


async def _wait(wakeup: Wakeup, stop: asyncio.Event, timeout: float) -> None:
    stopped = asyncio.ensure_future(stop.wait())
    woken = asyncio.ensure_future(wakeup.wait(timeout))
    await asyncio.wait({stopped, woken}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    woken.cancel()
