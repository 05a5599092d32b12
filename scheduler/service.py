"""The scheduler role: materializes runs every interval and at once when a task changes; beside it, the janitor
purges what is older than the retention."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg

from scheduler.janitor import janitor_loop, purge, tend_days
from scheduler.materialize import materialize, near_term
from scheduler.workflows import materialize_workflows
from taskmill.db import is_transient, role_pool
from taskmill.logs import described
from taskmill.loops import Backoff, run_loops, unless_stopped
from taskmill.metrics import SCHEDULER_LAG
from taskmill.settings import Settings
from taskmill.store.schedule import lag_s
from taskmill.wakeup import Wakeup

log = logging.getLogger(__name__)


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    pool = await role_pool(settings.database_url, max_size=3)
    try:
        if until_idle:
            await tend_days(pool, settings.retention_days, settings.partition_days_ahead)
            await _materialize_once(pool, settings)
            await purge(pool, settings.retention_days, settings.retention_batch)
            return
        async with Wakeup(settings.database_url, "taskmill_tasks") as wakeup:
            log.info("scheduler ready", extra={"action": "ready"})
            await run_loops(
                stop,
                materialize=_materialize_loop(pool, settings, wakeup, stop),
                janitor=janitor_loop(pool, settings, stop),
            )
    finally:
        await pool.close()


async def _materialize_loop(pool: asyncpg.Pool, settings: Settings, wakeup: Wakeup, stop: asyncio.Event) -> None:
    backoff = Backoff(settings.db_retry_max_s)
    while not stop.is_set():
        if await _materialize_once(pool, settings):
            backoff.reset()
            await unless_stopped(stop, wakeup.wait(settings.scheduler_interval_s))
        else:  # the database went away: try again soon, not a whole interval later
            await unless_stopped(stop, wakeup.wait(min(backoff.next(), settings.scheduler_interval_s)))


async def _materialize_once(pool: asyncpg.Pool, settings: Settings) -> bool:
    """One pass; False when the database could not be reached (logged). Any other error is raised."""
    try:
        now = datetime.now(UTC)
        inserted = await materialize(pool, settings, now)
        inserted += await materialize_workflows(pool, settings, now)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("materialization failed, will retry: %s", described(exc), extra={"action": "materialize"})
        return False
    if inserted:
        log.info("materialized %d runs", inserted, extra={"action": "materialize"})
    try:  # against the near term, which every task has made whatever its reach (a frequent task stops short of
        # the horizon on purpose)
        SCHEDULER_LAG.set(await lag_s(pool, near_term(now, settings.lookahead_hours)))
    except Exception as exc:  # a metric: the next pass tries again
        log.info("cannot measure the scheduler's lag: %s", described(exc))
    return True
