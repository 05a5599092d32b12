"""pgqueuer as a reference: `pgqueuer-burst` and `pgqueuer-at` (bench/references/__init__.py).

Workers: two processes that each run what `pgq run bench.references.pgqueuer_ref:worker` runs (`main` below), one
asyncio loop that dequeues and runs its jobs as tasks, as each of taskmill's two processors is. pgqueuer's defaults
throughout, as `settings` in each line says: `--batch-size` 10 (jobs per dequeue statement; `--pgqueuer-batch-size
25` for the other figure), no `--max-concurrent-tasks` (a worker takes jobs as long as there are any), dequeue
timeout 30 s and heartbeat timeout 30 s, the `durable` install (every table logged), one asyncpg connection per
worker (`PgQueuer.from_asyncpg_connection`, as its documentation shows), the `queued` status row and the
completion (`successful`, the job's row deleted) logged in pgqueuer_log by its own buffered writer. The ledger
row is written through an asyncpg pool of the worker's own, at asyncpg's default size (10), since a worker runs
many jobs at once; a job that waits for a ledger connection starts (is recorded) later. Jobs are enqueued with
`Queries.enqueue` in its list form, 1,000 a statement (the `at` jobs all in one, so they share one due instant:
`execute_after` = the statement's now() + ahead).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import asyncpg
import pgqueuer
import uvloop
from pgqueuer import Job, PgQueuer, Queries
from pgqueuer.domain.settings import db_settings

from bench.references.common import (
    Workers,
    burst_line,
    create_database,
    database_for,
    drop_database,
    integrity,
    measure_at,
    wait_ledger,
)

WORKERS = 2
DEFAULT_BATCH_SIZE = 10  # `pgq run --batch-size`'s default
ENQUEUE_CHUNK = 1000
ENTRYPOINT = "taskmill_bench_noop"
APPLICATION_NAME = "taskmill-bench-pgqueuer"
START_TIMEOUT_S = 60.0


@asynccontextmanager
async def worker() -> AsyncIterator[PgQueuer]:
    """The `pgq run` factory: the database is pgqueuer's own `PGDSN`, which holds the ledger too."""
    dsn = os.environ["PGDSN"]
    server_settings = {"application_name": APPLICATION_NAME}
    conn = await asyncpg.connect(dsn, server_settings=server_settings)
    ledger = await asyncpg.create_pool(dsn, server_settings=server_settings)
    pgq = PgQueuer.from_asyncpg_connection(conn)

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        assert job.payload is not None
        await ledger.execute(
            "INSERT INTO ledger (job_id, executed_at) VALUES ($1, clock_timestamp())", int(job.payload)
        )

    try:
        yield pgq
    finally:
        await ledger.close()
        await conn.close()


@dataclass
class Run:
    workers: Workers
    conn: asyncpg.Connection
    queries: Queries


@asynccontextmanager
async def running(dsn: str, batch_size: int) -> AsyncIterator[Run]:
    """A fresh database with pgqueuer's schema and the ledger, two workers on it; dropped at the end."""
    db = database_for(dsn, "pgqueuer")
    await create_database(db)
    workers = Workers("pgqueuer")
    conn = await asyncpg.connect(db)
    try:
        queries = Queries.from_asyncpg_connection(conn)
        await queries.install()
        env = dict(os.environ, PGDSN=db)
        for i in range(1, WORKERS + 1):
            argv = [sys.executable, "-m", "bench.references.pgqueuer_ref"]
            await workers.spawn(f"worker-{i}", [*argv, "--batch-size", str(batch_size)], env)
        await wait_started(conn, workers)
        yield Run(workers, conn, queries)
    finally:
        await workers.stop()
        await conn.close()
        await drop_database(db)


async def wait_started(conn: asyncpg.Connection, workers: Workers) -> None:
    """Until each worker holds its connection and ledger pool; then a second for it to check the schema and
    LISTEN (not timed: jobs enqueued before a worker listens are only dequeued later, never lost)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1"
    # Each worker: one pgqueuer connection and the pool's minimum (10) of ledger connections.
    while await conn.fetchval(sql, APPLICATION_NAME) < WORKERS * 11:
        workers.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"pgqueuer: workers not connected after {START_TIMEOUT_S} s")
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    workers.check()


async def enqueue(queries: Queries, jobs: range, execute_after: dt.timedelta | None = None) -> None:
    n = len(jobs)
    await queries.enqueue(
        [ENTRYPOINT] * n, [str(i).encode() for i in jobs], [0] * n, [execute_after] * n if execute_after else None
    )


def settings(batch_size: int) -> dict[str, Any]:
    return {
        "pgqueuer": version("pgqueuer"),
        "workers": WORKERS,
        "processes": WORKERS,
        "worker": "pgqueuer.run (the supervisor of `pgq run`) on uvloop",
        "batch_size": batch_size,
        "max_concurrent_tasks": None,
        "dequeue_timeout_s": 30,
        "heartbeat_timeout_s": 30,
        "durability": "durable",
        "driver": "asyncpg, one connection per worker",
        "enqueue": f"Queries.enqueue, lists of {ENQUEUE_CHUNK}",
        "ledger": "asyncpg pool per worker (10 connections), autocommit INSERT",
    }


async def burst(dsn: str, jobs: int, *, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """`jobs` no-op jobs enqueued at once: from the first enqueue to the last ledger row."""
    async with running(dsn, batch_size) as run:
        start = await run.conn.fetchval("SELECT clock_timestamp()")
        for first in range(0, jobs, ENQUEUE_CHUNK):
            await enqueue(run.queries, range(first, min(first + ENQUEUE_CHUNK, jobs)))
        enqueue_s = (await run.conn.fetchval("SELECT clock_timestamp()") - start).total_seconds()
        await wait_ledger(run.conn, jobs, run.workers)
        end = await run.conn.fetchval("SELECT max(executed_at) FROM ledger")
        counts = await integrity(run.conn, jobs)
        rss = run.workers.rss_mb()
    return burst_line(
        "pgqueuer", jobs, start, end, enqueue_s=round(enqueue_s, 2), **counts, rss_mb=rss, settings=settings(batch_size)
    )


async def at(dsn: str, jobs: int, ahead_s: float, *, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """`jobs` no-op jobs due at one instant `ahead_s` from now: lateness of each start after it."""
    async with running(dsn, batch_size) as run:
        await enqueue(run.queries, range(jobs), dt.timedelta(seconds=ahead_s))
        table = db_settings().queue_table
        row = await run.conn.fetchrow(f"SELECT min(execute_after) AS due, max(execute_after) AS last FROM {table}")
        assert row is not None and row["due"] == row["last"], row
        due = row["due"]
        measured = await measure_at(run.conn, due, jobs, run.workers)
    return {
        "system": "pgqueuer",
        "workload": "at",
        "runs": jobs,
        "ahead_s": ahead_s,
        **measured,
        "settings": settings(batch_size) | {"at": "Queries.enqueue(execute_after=ahead), one statement"},
    }


def main() -> None:
    """A worker as `pgq run bench.references.pgqueuer_ref:worker --batch-size N` runs one: `pgqueuer.run`, the
    supervisor behind that command, on uvloop as the command does. Not the command itself: with the typer installed
    here (0.29) its `--log-level` option fails at start, given or not (`'str' object has no attribute 'name'`)."""
    parser = argparse.ArgumentParser(prog="python -m bench.references.pgqueuer_ref")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(pgqueuer.run(worker, batch_size=args.batch_size))


if __name__ == "__main__":
    main()
