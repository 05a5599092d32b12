"""The distributor role: publishes due runs as they fall due (over the transport the settings choose), rescues
runs whose lease ran out, and over RabbitMQ moves runs out of queues no processor consumes (distributor/reroute.py)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from distributor import requests
from distributor.dispatch import Spread, publish_or_revert
from distributor.pacing import pace
from distributor.reroute import Rerouter
from distributor.rescue import rescue
from distributor.traces import traced
from taskmill import pressure
from taskmill.alerts import Alerter
from taskmill.broker import AmqpPublisher
from taskmill.crash import Crash
from taskmill.db import is_transient, role_pool
from taskmill.logs import described
from taskmill.loops import Backoff, pause_if_transient, run_loops, unless_stopped, wait_or_stop
from taskmill.settings import Settings
from taskmill.store.runs import Outbound, claim_due, next_due_in
from taskmill.transport import Publisher, open_link
from taskmill.wakeup import Wakeup

log = logging.getLogger(__name__)

# Publishing one batch while claiming the next keeps both the database and the broker busy.
_BATCHES_IN_FLIGHT = 2


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    pool = await role_pool(settings.database_url, max_size=_BATCHES_IN_FLIGHT + 2)
    try:
        link = await open_link(settings, "taskmill-distributor", pool)
    except BaseException:
        await pool.close()
        raise
    publisher = link.publisher
    alerter = Alerter(settings.alert_webhook_url)
    try:
        if until_idle:
            await _drain(pool, publisher, settings, alerter)
            return
        async with Wakeup(settings.database_url, "taskmill_schedule") as wakeup:
            log.info("distributor ready", extra={"action": "ready"})
            loops = {
                "dispatch": _dispatch_loop(pool, publisher, settings, wakeup, stop),
                "rescue": _rescue_loop(pool, publisher, settings, alerter, stop),
                "pressure": pressure.keep_current(pool, publisher, settings.pressure_interval_s, stop),
            }
            if link.connection is not None:  # run requests from any language come over RabbitMQ
                loops["requests"] = requests.serve(link.connection, pool, publisher, settings, stop)
            if isinstance(publisher, AmqpPublisher):
                loops["reroute"] = Rerouter(pool, publisher).keep(stop)
            await run_loops(stop, **loops)
    finally:
        await alerter.close()
        await link.close()
        await pool.close()


async def _drain(pool: asyncpg.Pool, publisher: Publisher, settings: Settings, alerter: Alerter) -> None:
    """Publishes everything due now and rescues what is stale, then returns (for tests and scripts)."""
    spread = Spread(publisher, settings.message_runs)
    while runs := await claim_due(pool, settings.claim_batch, settings.queued_lease_s, settings.dispatch_lead_s):
        with traced(runs) as outbound:
            await publish_or_revert(pool, publisher, outbound, per_message=await spread.per_message(len(runs)))
    await rescue(pool, publisher, settings, alerter=alerter)
    if isinstance(publisher, AmqpPublisher):
        await Rerouter(pool, publisher).sweep()


async def _dispatch_loop(
    pool: asyncpg.Pool, publisher: Publisher, settings: Settings, wakeup: Wakeup, stop: asyncio.Event
) -> None:
    """Claims and publishes until `stop`. A batch publishes in a task of its own while the next is claimed; the
    task group waits for them at the end, and stops the loop if one fails for good."""
    slots = asyncio.Semaphore(_BATCHES_IN_FLIGHT)
    spread = Spread(publisher, settings.message_runs)
    crash = Crash(settings.crash_at)
    backoff = Backoff(settings.db_retry_max_s)
    missed = False
    async with asyncio.TaskGroup() as publishing:
        while not stop.is_set():
            await slots.acquire()
            try:
                runs = await claim_due(pool, settings.claim_batch, settings.queued_lease_s, settings.dispatch_lead_s)
                due_in = None if runs else await next_due_in(pool, settings.dispatch_lead_s)
            except Exception as exc:
                slots.release()
                await pause_if_transient(exc, backoff, stop, "claim")
                continue
            backoff.reset()
            if runs:
                per_message = await spread.per_message(len(runs))
                task = publishing.create_task(_publish(pool, publisher, runs, crash, per_message))
                task.add_done_callback(lambda _: slots.release())
            else:
                slots.release()
            step = pace(len(runs), due_in, missed, settings.max_idle_s)
            missed = step.missed
            if step.wait_s > 0:
                await unless_stopped(stop, wakeup.wait(step.wait_s))


async def _publish(
    pool: asyncpg.Pool, publisher: Publisher, runs: list[Outbound], crash: Crash, per_message: int
) -> None:
    try:
        with traced(runs) as outbound:
            await publish_or_revert(pool, publisher, outbound, crash=crash, per_message=per_message)
    except Exception as exc:
        if not is_transient(exc):
            raise
        # The database went away between the claim and the revert: the runs stay queued, and the rescuer
        # publishes them again when their lease ends.
        log.warning(
            "could not revert %d runs (the rescuer will): %s", len(runs), described(exc), extra={"action": "revert"}
        )


async def _rescue_loop(
    pool: asyncpg.Pool, publisher: Publisher, settings: Settings, alerter: Alerter, stop: asyncio.Event
) -> None:
    while not await wait_or_stop(stop, settings.rescue_interval_s):
        try:
            await rescue(pool, publisher, settings, alerter=alerter)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("rescue failed, will retry: %s", described(exc), extra={"action": "rescue"})
