"""The distributor role: publishes due runs as they fall due, and rescues runs whose lease ran out."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from distributor.dispatch import publish_or_revert
from distributor.rescue import rescue
from taskmill.broker import Publisher, connect
from taskmill.crash import Crash
from taskmill.db import CONNECTION_ERRORS, create_pool
from taskmill.loops import Backoff, run_loops, wait_or_stop
from taskmill.settings import Settings
from taskmill.store.runs import Outbound, claim_due, next_due_in
from taskmill.wakeup import Wakeup

log = logging.getLogger(__name__)

# Publishing one batch while claiming the next keeps both the database and the broker busy.
_BATCHES_IN_FLIGHT = 2
_BUSY_RETRY_S = 0.2


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    pool = await create_pool(settings.database_url, max_size=_BATCHES_IN_FLIGHT + 2)
    connection = await connect(settings, "taskmill-distributor")
    try:
        publisher = await Publisher.open(connection, settings)
        if until_idle:
            await _drain(pool, publisher, settings)
            return
        async with Wakeup(settings.database_url, "taskmill_schedule") as wakeup:
            await run_loops(
                stop,
                dispatch=_dispatch_loop(pool, publisher, settings, wakeup, stop),
                rescue=_rescue_loop(pool, publisher, settings, stop),
            )
    finally:
        await connection.close()
        await pool.close()


async def _drain(pool: asyncpg.Pool, publisher: Publisher, settings: Settings) -> None:
    """Publishes everything due now and rescues what is stale, then returns (for tests and scripts)."""
    while runs := await claim_due(pool, settings.claim_batch, settings.queued_lease_s, settings.dispatch_lead_s):
        await publish_or_revert(pool, publisher, runs)
    await rescue(pool, publisher, settings)


async def _dispatch_loop(
    pool: asyncpg.Pool, publisher: Publisher, settings: Settings, wakeup: Wakeup, stop: asyncio.Event
) -> None:
    in_flight: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(_BATCHES_IN_FLIGHT)
    crash = Crash(settings.crash_at)
    backoff = Backoff(settings.db_retry_max_s)
    missed = False  # the last claim found nothing although a run was overdue
    try:
        while not stop.is_set():
            await slots.acquire()
            try:
                runs = await claim_due(pool, settings.claim_batch, settings.queued_lease_s, settings.dispatch_lead_s)
                due_in = None if runs else await next_due_in(pool, settings.dispatch_lead_s)
            except CONNECTION_ERRORS as exc:
                slots.release()
                pause = backoff.next()
                log.warning("claim failed, will retry in %.1f s: %s", pause, exc, extra={"action": "claim"})
                await wait_or_stop(stop, pause)
                continue
            backoff.reset()
            if runs:
                task = asyncio.create_task(_publish(pool, publisher, runs, crash))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(lambda _: slots.release())
                missed = False
                if len(runs) == settings.claim_batch:
                    continue  # more are due: claim the next batch while this one publishes
                due_in = 0.0
            else:
                slots.release()
            if due_in is None:
                timeout = settings.max_idle_s
            elif due_in > 0:
                timeout = min(due_in, settings.max_idle_s)
            elif not missed or runs:
                # Fell due between the claim and the look at the next due time: claim again at once.
                missed = not runs
                continue
            else:
                # Overdue yet not claimable: another replica holds those rows, or they wait out a revert backoff.
                timeout = _BUSY_RETRY_S
            await _sleep(wakeup, stop, timeout)
    finally:
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)


async def _publish(pool: asyncpg.Pool, publisher: Publisher, runs: list[Outbound], crash: Crash) -> None:
    try:
        await publish_or_revert(pool, publisher, runs, crash=crash)
    except CONNECTION_ERRORS as exc:
        # The database went away between the claim and the revert: the runs stay queued, and the rescuer
        # publishes them again when their lease ends.
        log.warning("could not revert %d runs (the rescuer will): %s", len(runs), exc, extra={"action": "revert"})


async def _sleep(wakeup: Wakeup, stop: asyncio.Event, timeout: float) -> None:
    """Sleeps until the timeout, a NOTIFY about new or reverted runs, or the stop."""
    waiter = asyncio.ensure_future(wakeup.wait(timeout))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for f in (waiter, stopped):
        f.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await f


async def _rescue_loop(pool: asyncpg.Pool, publisher: Publisher, settings: Settings, stop: asyncio.Event) -> None:
    while not await wait_or_stop(stop, settings.rescue_interval_s):
        try:
            await rescue(pool, publisher, settings)
        except CONNECTION_ERRORS as exc:
            log.warning("rescue failed, will retry: %s", exc, extra={"action": "rescue"})
