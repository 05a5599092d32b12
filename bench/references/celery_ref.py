"""Celery as a reference: `celery-burst`, `celery-at` and `celery-cron` (bench/references/__init__.py).

Workers: two `celery worker` processes, each `--concurrency 1` of the default prefork pool: two processes that
execute jobs, as taskmill's two processors are. Celery's prefork worker is a consumer process that hands each
task to a pool child over a pipe, so that is two consumers and two pool children (four processes); with
`--celery-pool solo` each worker runs its tasks itself (two processes in all). A pool process runs one task at a
time: Celery's concurrency is its processes (the library's default is one per CPU, which for two workers on this
two-core box would be four executing processes, not two).

Everything else is Celery's default, as `settings` in each line says: prefetch `worker_prefetch_multiplier` (4) x
concurrency (1) = 4 unacked messages per worker; `task_acks_late` False (a task is acked when received, before it
runs: a worker killed mid-task loses it, a lighter guarantee than taskmill's ack after the outcome is recorded;
`--celery-acks-late` for the other); no result backend (the ledger row is the one record of a run); a durable
classic queue; persistent messages (delivery mode 2), published without publisher confirms; the JSON serializer;
gossip, mingle and the worker heartbeat on; task events off; ETA tasks held in the worker until due, checked by its
timer (`worker_timer_precision` 1 s). Jobs are sent as a Celery user sends them: `Task.apply_async` per job
(`eta=` for `at`) over one producer held for the whole batch (`app.producer_or_acquire`), from the bench process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import asyncpg
import celery
import kombu

from bench.references.celery_app import TASK, Config, broker_names, make_app
from bench.references.common import (
    Workers,
    burst_line,
    create_database,
    database_for,
    drop_database,
    integrity,
    measure_at,
    percentiles,
    wait_ledger,
)

WORKERS = 2
CONCURRENCY = 1
PREFETCH_MULTIPLIER = 4  # Celery's default, reported in `settings`
START_TIMEOUT_S = 60.0


def broker_url(amqp: str) -> str:
    """py-amqp, named: `amqp://` means the same transport to kombu."""
    return "py" + amqp if amqp.startswith("amqp://") else amqp


@dataclass
class Run:
    config: Config
    app: Any
    workers: Workers
    conn: asyncpg.Connection


@asynccontextmanager
async def running(dsn: str, amqp: str, pool: str, acks_late: bool, cron_entries: int = 0) -> AsyncIterator[Run]:
    """A fresh ledger database, two workers consuming the run's own queue; all of it removed at the end."""
    config = Config(
        broker_url=broker_url(amqp),
        namespace=f"taskmill-bench-celery-{uuid.uuid4().hex[:8]}",
        ledger_dsn=database_for(dsn, "celery"),
        acks_late=acks_late,
        cron_entries=cron_entries,
    )
    await create_database(config.ledger_dsn)
    env = config_env(config)
    workers = Workers("celery")
    app = make_app(config)
    conn: asyncpg.Connection | None = None
    try:
        for i in range(1, WORKERS + 1):
            argv = [*celery_cli(), "worker", "--loglevel", "WARNING", "--pool", pool, "--concurrency", str(CONCURRENCY)]
            await workers.spawn(f"worker-{i}", [*argv, "--hostname", f"w{i}@{config.namespace}"], env)
        await wait_consumers(amqp, config.namespace, WORKERS, workers)
        conn = await asyncpg.connect(config.ledger_dsn)
        yield Run(config, app, workers, conn)
    finally:
        if conn is not None:
            await conn.close()
        app.close()
        await workers.stop()
        await delete_broker_objects(amqp, config.namespace)
        await drop_database(config.ledger_dsn)


def config_env(config: Config) -> dict[str, str]:
    return dict(os.environ, **config.env())


def celery_cli() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "bench.references.celery_app"]


async def wait_consumers(amqp: str, queue: str, count: int, workers: Workers) -> None:
    """Until `count` consumers are on the queue: the workers are up, their pool children too (started first)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    conn = await aio_pika.connect(amqp)
    try:
        while True:
            workers.check()
            channel = await conn.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
                consumers = declared.declaration_result.consumer_count or 0
            except aiormq.exceptions.ChannelNotFoundEntity:
                consumers = 0
            finally:
                if not channel.is_closed:
                    await channel.close()
            if consumers >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery: {consumers} of {count} workers consuming after {START_TIMEOUT_S} s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def delete_broker_objects(amqp: str, namespace: str) -> None:
    queues, exchanges = broker_names(namespace)
    conn = await aio_pika.connect(amqp)
    try:
        channel = await conn.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await conn.close()


def publish(app: Any, jobs: int, eta: dt.datetime | None = None) -> float:
    """Sends jobs 0..jobs-1 as a Celery user does; returns the seconds it took."""
    task = app.tasks[TASK]
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(jobs):
            task.apply_async((i,), eta=eta, producer=producer)
    return time.perf_counter() - started


def settings(pool: str, acks_late: bool) -> dict[str, Any]:
    processes = WORKERS * (1 + CONCURRENCY) if pool == "prefork" else WORKERS
    return {
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "workers": WORKERS,
        "pool": pool,
        "concurrency_per_worker": CONCURRENCY,
        "processes": processes,
        "prefetch_per_worker": PREFETCH_MULTIPLIER * CONCURRENCY,
        "acks_late": acks_late,
        "broker": "RabbitMQ via py-amqp, a durable classic queue of the run's own, persistent messages, "
        "no publisher confirms",
        "result_backend": None,
        "enqueue": "Task.apply_async per job over one producer",
        "ledger": "psycopg 3, a connection per pool process, autocommit INSERT",
    }


async def burst(dsn: str, amqp: str, jobs: int, *, pool: str = "prefork", acks_late: bool = False) -> dict[str, Any]:
    """`jobs` no-op jobs sent at once: from the first send to the last ledger row."""
    async with running(dsn, amqp, pool, acks_late) as run:
        start = await run.conn.fetchval("SELECT clock_timestamp()")
        enqueue_s = await asyncio.to_thread(publish, run.app, jobs)
        await wait_ledger(run.conn, jobs, run.workers)
        end = await run.conn.fetchval("SELECT max(executed_at) FROM ledger")
        counts = await integrity(run.conn, jobs)
        rss = run.workers.rss_mb()
    return burst_line(
        "celery",
        jobs,
        start,
        end,
        enqueue_s=round(enqueue_s, 2),
        **counts,
        rss_mb=rss,
        settings=settings(pool, acks_late),
    )


async def at(
    dsn: str, amqp: str, jobs: int, ahead_s: float, *, pool: str = "prefork", acks_late: bool = False
) -> dict[str, Any]:
    """`jobs` no-op jobs sent with one `eta`, `ahead_s` from now: lateness of each start after it."""
    async with running(dsn, amqp, pool, acks_late) as run:
        due = await run.conn.fetchval("SELECT clock_timestamp() + make_interval(secs => $1)", ahead_s)
        enqueue_s = await asyncio.to_thread(publish, run.app, jobs, due)
        measured = await measure_at(run.conn, due, jobs, run.workers)
    return {
        "system": "celery",
        "workload": "at",
        "runs": jobs,
        "ahead_s": ahead_s,
        "enqueue_s": round(enqueue_s, 2),
        **measured,
        "settings": settings(pool, acks_late) | {"eta": "apply_async(eta=due)", "worker_timer_precision_s": 1.0},
    }


async def cron(
    dsn: str, amqp: str, entries: int, minutes: int, *, pool: str = "prefork", acks_late: bool = False
) -> dict[str, Any]:
    """`entries` every-minute `crontab()` entries in celery beat (its default PersistentScheduler), over the first
    `minutes` minute boundaries at least 10 s after beat starts: lateness of each execution after its minute
    (executed_at - the minute it falls in; a run more than a minute late would count in the next one)."""
    async with running(dsn, amqp, pool, acks_late, cron_entries=entries) as run:
        launched = await run.conn.fetchval("SELECT clock_timestamp()")
        beat = [*celery_cli(), "beat", "--loglevel", "WARNING", "--schedule", str(run.workers.logdir / "schedule")]
        await run.workers.spawn("beat", beat, config_env(run.config))
        first = (launched + dt.timedelta(seconds=70)).replace(second=0, microsecond=0)
        end = first + dt.timedelta(minutes=minutes)
        window = "FROM ledger WHERE executed_at >= $1 AND executed_at < $2"
        expected = entries * minutes
        # Until every execution of the window is in, or the window is over.
        while await run.conn.fetchval("SELECT clock_timestamp()") < end:
            run.workers.check()
            if await run.conn.fetchval(f"SELECT count(*) {window}", first, end) >= expected:
                break
            await asyncio.sleep(1.0)
        await asyncio.sleep(1.0)
        rows = await run.conn.fetch(
            "SELECT job_id, date_trunc('minute', executed_at) AS minute, "
            f"(extract(epoch FROM executed_at - date_trunc('minute', executed_at)) * 1000)::float8 AS ms {window}",
            first,
            end,
        )
    distinct = len({(r["job_id"], r["minute"]) for r in rows})
    return {
        "system": "celery",
        "workload": "cron",
        "entries": entries,
        "minutes": minutes,
        "first_minute": first.isoformat(),
        "runs": len(rows),
        "lateness_ms": percentiles([r["ms"] for r in rows]),
        "lost": expected - distinct,
        "duplicates": len(rows) - distinct,
        "settings": settings(pool, acks_late)
        | {"enqueue": "celery beat (PersistentScheduler), one crontab() entry per job id"},
    }
