"""`python -m bench`: the real roles as separate processes against the real services; one JSON line a workload.

burst  N noop runs due now: end-to-end throughput (every state change in PostgreSQL, every message
       persistent and confirmed).
at     N noop runs due at one instant a few seconds ahead: start lateness (started_at - scheduled_time).
capacity  the capacity forecast over a million scheduled runs (bench/capacity.py); needs no roles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aio_pika
import asyncpg

from bench import capacity
from taskmill import topology
from taskmill.db import connect
from taskmill.migrate import migrate

WORKLOADS = ("burst", "at", "capacity")
DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/taskmill_bench")
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def fresh_database(dsn: str) -> None:
    base, name = dsn.rsplit("/", 1)
    admin = await asyncpg.connect(base + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    await migrate(dsn)


class Roles:
    """The roles as subprocesses of `taskmill`, stopped with SIGTERM at the end."""

    def __init__(self, prefix: str, args: argparse.Namespace) -> None:
        self.prefix = prefix
        self.env = dict(
            os.environ,
            DATABASE_URL=DSN,
            AMQP_URL=AMQP,
            TASKMILL_BROKER_PREFIX=prefix,
            TASKMILL_LOG_LEVEL="WARNING",
            TASKMILL_QUEUE_TYPE=args.queue_type,
        )
        self.args = args
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        # The distributor declares the topology; processors start once it exists.
        await self._spawn("distributor")
        await asyncio.sleep(1.0)
        for _ in range(self.args.distributors - 1):
            await self._spawn("distributor")
        for _ in range(self.args.processors):
            await self._spawn("processor", "--concurrency", str(self.args.concurrency))
        await asyncio.sleep(1.5)

    async def _spawn(self, *argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "taskmill.cli", *argv, env=self.env)
        self.procs.append(proc)

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for proc in self.procs:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
                out[str(proc.pid)] = round(rss / 1024, 1)
            except (OSError, StopIteration):
                pass
        return out

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()


async def insert_runs(conn: asyncpg.Connection, name: str, n: int, due_in_s: float) -> None:
    task_id = await conn.fetchval(
        "INSERT INTO tasks (name, type, schedule_kind, payload) VALUES ($1, 'noop', 'immediate', '{\"bench\": true}') "
        "RETURNING id",
        name,
    )
    # Distinct instants a microsecond apart (UNIQUE (task_id, scheduled_time)); `at` runs share one second.
    await conn.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, date_trunc('milliseconds', now()) + make_interval(secs => $2) - i * interval '1 microsecond' "
        "FROM generate_series(0, $3 - 1) i",
        task_id,
        due_in_s,
        n,
    )


async def wait_terminal(conn: asyncpg.Connection, n: int, timeout_s: float) -> float:
    start = time.perf_counter()
    deadline = start + timeout_s
    while time.perf_counter() < deadline:
        done = await conn.fetchval(
            "SELECT count(*) FROM task_schedule WHERE status IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped')"
        )
        if done >= n:
            break
        await asyncio.sleep(0.02)
    return time.perf_counter()


async def integrity(conn: asyncpg.Connection, n: int) -> dict[str, int]:
    succeeded = await conn.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'succeeded'")
    # A duplicate is a run started more than once or recorded more than once.
    duplicates = await conn.fetchval(
        "SELECT (SELECT count(*) FROM run_audit WHERE to_status = 'running') - count(DISTINCT run_id) "
        "FROM run_audit WHERE to_status = 'running'"
    )
    extra_results = await conn.fetchval("SELECT count(*) - count(DISTINCT run_id) FROM task_results")
    return {"lost": n - succeeded, "duplicates": duplicates + extra_results}


def percentiles(values: Sequence[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(values)
    return {k: round(float(np.percentile(a, q)), 1) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))} | {
        "max": round(float(a.max()), 1)
    }


async def burst(conn: asyncpg.Connection, roles: Roles, n: int) -> dict[str, Any]:
    await conn.execute("TRUNCATE tasks, task_schedule, task_results, run_audit RESTART IDENTITY CASCADE")
    start = await conn.fetchval("SELECT clock_timestamp()")
    await insert_runs(conn, "burst", n, 0.0)
    await wait_terminal(conn, n, 600)
    end = await conn.fetchval("SELECT max(finished_at) FROM task_schedule")
    wall = (end - start).total_seconds()
    return {
        "workload": "burst",
        "runs": n,
        "wall_s": round(wall, 2),
        "runs_per_s": round(n / wall),
        **await integrity(conn, n),
        "rss_mb": roles.rss_mb(),
    }


async def at(conn: asyncpg.Connection, roles: Roles, n: int, ahead_s: float) -> dict[str, Any]:
    await conn.execute("TRUNCATE tasks, task_schedule, task_results, run_audit RESTART IDENTITY CASCADE")
    await insert_runs(conn, "at", n, ahead_s)
    await asyncio.sleep(ahead_s)
    await wait_terminal(conn, n, 600)
    late = await conn.fetch(
        "SELECT (extract(epoch FROM started_at - scheduled_time) * 1000)::float8 AS ms "
        "FROM task_schedule WHERE started_at IS NOT NULL"
    )
    return {
        "workload": "at",
        "runs": n,
        "lateness_ms": percentiles([r["ms"] for r in late]),
        **await integrity(conn, n),
    }


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    # No `choices` here: argparse checks an empty list against them and refuses it (CPython issue 9625).
    parser.add_argument("workloads", nargs="*", help="burst, at, capacity (default: all)")
    parser.add_argument("--runs", type=int, default=20_000, help="runs in the burst workload")
    parser.add_argument("--at-runs", type=int, default=5_000)
    parser.add_argument("--at-ahead", type=float, default=15.0, help="seconds ahead the `at` runs fall due")
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--distributors", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2500, help="per processor (noop runs are cheap)")
    parser.add_argument("--queue-type", default="quorum", choices=["quorum", "classic"])
    parser.add_argument("--capacity-runs", type=int, default=1_000_000, help="scheduled runs the forecast reads")
    parser.add_argument("--capacity-results", type=int, default=200_000, help="finished attempts of history")
    parser.add_argument("--capacity-lagging", type=int, default=1000, help="recurring tasks not materialized")
    args = parser.parse_args(argv)
    args.workloads = args.workloads or list(WORKLOADS)
    if unknown := set(args.workloads) - set(WORKLOADS):
        parser.error(f"unknown workload {', '.join(sorted(unknown))}; known: {', '.join(WORKLOADS)}")

    await fresh_database(DSN)
    roles = Roles(f"bench-{uuid.uuid4().hex[:8]}", args)
    conn = await connect(DSN)
    pipeline = {"burst", "at"} & set(args.workloads)
    if pipeline:
        await roles.start()
    try:
        for workload in args.workloads:
            if workload == "capacity":
                result = await capacity.run(conn, DSN, args.capacity_runs, args.capacity_results, args.capacity_lagging)
            else:
                if workload == "burst":
                    result = await burst(conn, roles, args.runs)
                else:
                    result = await at(conn, roles, args.at_runs, args.at_ahead)
                result["setup"] = {
                    "processors": args.processors,
                    "concurrency": args.concurrency,
                    "distributors": args.distributors,
                    "queue_type": args.queue_type,
                }
            print(json.dumps(result), flush=True)
    finally:
        await conn.close()
        if pipeline:
            await roles.stop()
            await delete_broker_objects(roles.prefix)


async def delete_broker_objects(prefix: str) -> None:
    conn = await aio_pika.connect(AMQP)
    try:
        await topology.delete(await conn.channel(), topology.Names(prefix))
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
