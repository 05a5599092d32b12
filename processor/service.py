"""The processor role: consumes run messages with a prefetch equal to its concurrency, over the transport the
settings choose."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import socket

import asyncpg

from processor.consume import Consumer
from processor.intake import Intake, open_intake
from taskmill import handlers, metrics
from taskmill.db import create_pool, is_transient, role_pool
from taskmill.logs import described
from taskmill.loops import run_loops, unless_stopped, wait_or_stop
from taskmill.settings import ConfigError, Settings
from taskmill.store.processors import LIVE_WITHIN_S, dedicated, leave, register, seen
from taskmill.store.tasktypes import Registered, registered
from taskmill.store.tasktypes import register as register_types
from taskmill.tasktypes import BUILTIN
from taskmill.tasktypes.command import sweep_spawn_dirs
from taskmill.tasktypes.http_client import http_client
from taskmill.tasktypes.jail import Jail
from taskmill.transport import Link, open_link
from taskmill.workerpool.child import Setup
from taskmill.workerpool.pool import WorkerPool

log = logging.getLogger(__name__)

# How often a processor tells the database it is alive (GET /health lists those seen within three of these).
HEARTBEAT_S = 10.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    worker = worker_name()
    try:
        served = handlers.import_modules(settings.import_list)
    except handlers.ImportFailed as exc:
        raise ConfigError(str(exc)) from exc
    jail = await asyncio.to_thread(Jail.detect, settings)  # tries the sandbox once, for real
    if swept := await asyncio.to_thread(sweep_spawn_dirs):
        log.info("removed %d spawn directories left by processors that were killed", swept)
    pool = await role_pool(settings.database_url, max_size=4)
    # Each handler attempt holds a connection for its transaction: as many as runs at once.
    handler_pool = await create_pool(settings.database_url, max_size=settings.concurrency) if served else None
    http = http_client(settings.http_allow_hosts, settings.http_deny_hosts)
    link: Link | None = None
    workers: WorkerPool | None = None
    try:
        link = await open_link(settings, "taskmill-processor", pool)
        types = await _dedicated_to(pool, settings, served, worker) if settings.type_patterns else None
        workers = _worker_pool(settings, [h for h in served if types is None or h.name in types])
        _say_isolation(jail)
        await register_types(pool, [_registration(h) for h in served], worker)
        await register(pool, worker, jail.describe(), [h.name for h in served], types)
        intake = open_intake(link, settings, pool, worker, types)
        consumer = Consumer(settings, pool, link.publisher, http, jail, worker, intake, handler_pool, workers)
        consumer.start()
        served_types = types if types is not None else [*BUILTIN, *(h.name for h in served)]
        metrics.serving(served_types, settings.concurrency, consumer.slots_busy)
        if workers is not None:
            await workers.ready()  # started with the processor: def handlers' first runs do not wait for it
        await intake.subscribe(consumer.on_message)
        log.info(
            "processor ready: %d runs at once, over %s%s%s",
            settings.concurrency,
            settings.transport_name,
            f"; handlers: {', '.join(sorted(h.name for h in served))}" if served else "",
            f"; only: {', '.join(types)}" if types is not None else "",
            extra={"action": "ready"},
        )
        try:
            if until_idle:
                await _wait_idle(intake, consumer, stop)
            else:

                def room() -> bool:
                    return consumer.in_flight < settings.concurrency

                await run_loops(
                    stop,
                    intake=intake.keep(stop, room),
                    failure=unless_stopped(stop, consumer.failed()),
                    heartbeat=_heartbeat(pool, worker, stop),
                )
        finally:
            # Stop taking work; what we hold is finished and recorded, or handed back (also when the intake
            # gave up, before the error stops the process). Gone from the routing at once: what waits for our
            # types goes to other processors meanwhile (distributor/reroute.py), not after our last run.
            await intake.cancel()
            await _leave(pool, worker)
            await consumer.drain()
    finally:
        if workers is not None:
            await workers.close()  # after the drain: no call of a def handler is left running
        await http.aclose()
        if link is not None:
            await link.close()
        if handler_pool is not None:
            await handler_pool.close()
        await _leave(pool, worker)
        await pool.close()


async def _dedicated_to(
    pool: asyncpg.Pool, settings: Settings, served: list[handlers.Handler], worker: str
) -> list[str]:
    """The types `--types` names: each pattern matched against the built-in types, this processor's handlers and
    those registered. ConfigError when a pattern matches none, or the set overlaps another live dedicated
    processor's without being the same (a type would then have two queues)."""
    known = {*BUILTIN, *(h.name for h in served), *await registered(pool)}
    chosen: set[str] = set()
    for pattern in settings.type_patterns:
        matched = {t for t in known if fnmatch.fnmatchcase(t, pattern)}
        if not matched:
            raise ConfigError(f"--types: {pattern!r} matches no task type; known: {', '.join(sorted(known))}")
        chosen |= matched
    for other, theirs in (await dedicated(pool, LIVE_WITHIN_S)).items():
        if other != worker and chosen & set(theirs) and chosen != set(theirs):
            raise ConfigError(
                f"--types: {', '.join(sorted(chosen & set(theirs)))} is already served by processor {other}, "
                f"dedicated to {', '.join(sorted(theirs))}: processors dedicated to a type must share one --types"
            )
    return sorted(chosen)


def _worker_pool(settings: Settings, served: list[handlers.Handler]) -> WorkerPool | None:
    """Worker processes for the plain `def` handlers, if this processor runs any: at most one per execution slot,
    none started before a call needs it (the forkserver they are forked from starts now)."""
    if all(h.is_async for h in served):
        return None
    workers = WorkerPool(
        Setup(tuple(settings.import_list), settings.log_level, settings.log_format), settings.concurrency
    )
    workers.warm()
    return workers


async def _leave(pool: asyncpg.Pool, worker: str) -> None:
    try:
        await leave(pool, worker)
    except Exception as exc:  # it ages out of /health and of the routing by itself
        log.info("could not unregister %s: %s", worker, described(exc))


def _registration(handler: handlers.Handler) -> Registered:
    return Registered(
        handler.name,
        handler.description,
        handler.payload_model.model_json_schema(),
        handler.timeout_seconds,
        handler.module,
    )


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
            log.warning("heartbeat failed, will retry: %s", described(exc))


async def _wait_idle(intake: Intake, consumer: Consumer, stop: asyncio.Event) -> None:
    """Returns once no message is ready and nothing is in flight, twice in a row 100 ms apart."""
    quiet = 0
    keeping = asyncio.create_task(intake.keep(stop, lambda: True))
    try:
        while not stop.is_set() and quiet < 2:
            await asyncio.sleep(0.1)
            if keeping.done():
                keeping.result()
            ready = await intake.ready()
            quiet = quiet + 1 if ready == 0 and consumer.in_flight == 0 else 0
            consumer.raise_failure()
    finally:
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
