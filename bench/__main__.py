"""`python -m bench`: the real roles as separate processes against the real services; one JSON line a workload.

burst  N noop tasks created through POST /tasks/bulk and run now: end-to-end runs/s, lost and duplicates, and what
       each run cost (CPU of every role, of PostgreSQL and of RabbitMQ; rows, WAL and index entries), during it.
at     N noop tasks due at one instant a few seconds ahead: start lateness (started_at - scheduled_time).
pg-burst, pg-at  the same over the PostgreSQL transport (no RabbitMQ), in a database of their own; `system` is
       taskmill-postgres in their lines.
capacity  the capacity forecast over a million scheduled runs (bench/capacity.py); needs no roles.
cron   (only when named: minutes) N every-minute cron tasks over M whole minutes: start lateness.
history  (only when named: minutes) the claim's plan with 50 million runs of history behind it.
workflow  (only when named) a workflow of a wide level and a chain (bench/workflows.py): the level's runs/s and the
       hand-off from a step's finish to its dependent's start.
celery-burst, celery-at, pgqueuer-burst, pgqueuer-at, celery-cron
       the same workloads through Celery and pgqueuer, as references (bench/references/); then a `ratios` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import asyncpg

from bench import capacity, cost, history, pipeline, references, workflows
from bench.database import close_others
from bench.references.common import database_for, drop_database
from bench.stack import Setup, Stack
from taskmill import topology
from taskmill.db import connect
from taskmill.migrate import migrate

WORKLOADS = ("burst", "at", "pg-burst", "pg-at", "capacity", "scale", *references.WORKLOADS)
PIPELINE = ("burst", "at", "cron", "workflow", "pg-burst", "pg-at")
# The curve: (distributors, processors) for the `scale` workload.
SCALE = ((1, 1), (1, 2), (1, 4), (2, 2), (2, 4))
# Only when named: each takes minutes.
EXTRA_WORKLOADS = ("cron", "history", "workflow", *references.EXTRA_WORKLOADS)
DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/taskmill_bench")
# The PostgreSQL transport's stack: a database of its own, so the two stacks never share runs.
PG_DSN = database_for(DSN, "postgres")
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def fresh_database(dsn: str) -> None:
    await drop_database(dsn)
    await migrate(dsn)


async def scale(conn: asyncpg.Connection, base: Setup, runs: int) -> dict[str, Any]:
    """The burst with 1, 2 and 4 processors and 1 and 2 distributors, each a stack of its own: runs/s, CPU ms per run
    of each role and its memory."""
    curve = []
    for distributors, processors in SCALE:
        # No stack runs here now: the previous one's roles are reaped, their lingering sessions ended, and the
        # tables emptied before the next one starts (not under its scheduler and distributors, nor with what the
        # previous workload left, such as the capacity workload's recurring tasks, for its scheduler to expand).
        await close_others(conn)
        await pipeline.reset(conn)
        setup = Setup(processors, base.concurrency, distributors, base.queue_type)
        stack = Stack(DSN, AMQP, f"bench-{uuid.uuid4().hex[:8]}", setup)
        await stack.start()
        try:
            groups = await cpu_groups(conn, stack)
            line = await pipeline.burst(conn, stack, runs, groups, counters=False, fresh=True)
        finally:
            await stack.stop()
            await delete_broker_objects(stack.prefix)
        curve.append(
            {
                "distributors": distributors,
                "processors": processors,
                "runs_per_s": line["runs_per_s"],
                "lost": line["lost"],
                "duplicates": line["duplicates"],
                "cpu_ms_per_run": line["cpu_ms_per_run"],
                "rss_mb": line["rss_mb"],
            }
        )
    return {"workload": "scale", "runs": runs, "curve": curve}


async def cpu_groups(conn: asyncpg.Connection, stack: Stack) -> dict[str, list[int]]:
    """The processes whose CPU a workload is charged with: each role, PostgreSQL (its postmaster, whose children are
    the backends) and the RabbitMQ node (when the stack uses it)."""
    groups = stack.pids()
    groups["postgres"] = [await cost.postmaster_pid(conn)]
    if stack.setup.transport == "amqp" and (rabbit := cost.listener_pid(urlsplit(AMQP).port or 5672)) is not None:
        groups["rabbitmq"] = [rabbit]
    return groups


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    # No `choices` here: argparse checks an empty list against them and refuses it (CPython issue 9625).
    parser.add_argument(
        "workloads", nargs="*", help=f"{', '.join(WORKLOADS)} (default: these), {', '.join(EXTRA_WORKLOADS)}"
    )
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
    parser.add_argument("--history-runs", type=int, default=50_000_000, help="finished runs behind the claim")
    parser.add_argument("--history-days", type=int, default=90, help="days (partitions) they are spread over")
    parser.add_argument("--celery-pool", default="prefork", choices=["prefork", "solo", "threads"])
    parser.add_argument("--celery-acks-late", action="store_true", help="task_acks_late (default: Celery's, False)")
    parser.add_argument("--pgqueuer-batch-size", type=int, default=10, help="pgq run --batch-size (its default: 10)")
    parser.add_argument("--cron-entries", type=int, default=200, help="every-minute cron tasks in cron and celery-cron")
    parser.add_argument("--cron-minutes", type=int, default=3, help="minutes cron and celery-cron measure")
    parser.add_argument("--workflow-width", type=int, default=500, help="steps of the workflow's wide level")
    parser.add_argument("--workflow-chain", type=int, default=10, help="steps of the workflow's chain")
    parser.add_argument("--workflow-repeats", type=int, default=5, help="workflow runs, one after the other")
    args = parser.parse_args(argv)
    args.workloads = args.workloads or list(WORKLOADS)
    if unknown := set(args.workloads) - set(WORKLOADS) - set(EXTRA_WORKLOADS):
        known = (*WORKLOADS, *EXTRA_WORKLOADS)
        parser.error(f"unknown workload {', '.join(sorted(unknown))}; known: {', '.join(known)}")

    await fresh_database(DSN)
    setup = Setup(args.processors, args.concurrency, args.distributors, args.queue_type)
    stacks = Stacks(setup)
    conn = await connect(DSN)
    results = []
    try:
        for workload in args.workloads:
            if workload == "capacity":
                result = await capacity.run(conn, DSN, args.capacity_runs, args.capacity_results, args.capacity_lagging)
            elif workload == "history":
                result = await history.run(conn, args.history_runs, args.history_days)
            elif workload == "scale":
                await stacks.stop()
                result = await scale(conn, setup, args.runs)
            elif workload not in PIPELINE:
                await stacks.stop()  # a reference runs alone on the machine
                result = await references.run(workload, DSN, AMQP, args)
            else:
                result = await pipeline_workload(workload, stacks, args)
            print(json.dumps(result), flush=True)
            results.append(result)
        if ratios := references.ratios(results):
            print(json.dumps(ratios), flush=True)
    finally:
        await conn.close()
        await stacks.stop()


class Stacks:
    """The stack of roles each pipeline workload runs on, one transport at a time: started when first needed, and
    stopped when a workload needs the other transport's or none (the machine's two cores are not shared)."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.running: tuple[Stack, asyncpg.Connection] | None = None

    async def get(self, transport: str) -> tuple[Stack, asyncpg.Connection]:
        if self.running is not None and self.running[0].setup.transport == transport:
            return self.running
        await self.stop()
        dsn = DSN if transport == "amqp" else PG_DSN
        if transport != "amqp":
            await fresh_database(dsn)
        stack = Stack(dsn, AMQP, f"bench-{uuid.uuid4().hex[:8]}", replace(self.setup, transport=transport))
        await stack.start()
        self.running = stack, await connect(dsn)
        return self.running

    async def stop(self) -> None:
        if self.running is None:
            return
        stack, conn = self.running
        self.running = None
        await conn.close()
        await stack.stop()
        if stack.setup.transport == "amqp":
            await delete_broker_objects(stack.prefix)
        else:
            await drop_database(stack.dsn)


async def pipeline_workload(workload: str, stacks: Stacks, args: argparse.Namespace) -> dict[str, Any]:
    transport = "postgres" if workload.startswith("pg-") else "amqp"
    kind = workload.removeprefix("pg-")
    stack, conn = await stacks.get(transport)
    if kind == "burst":
        result = await pipeline.burst(conn, stack, args.runs, await cpu_groups(conn, stack))
    elif kind == "cron":
        result = await pipeline.cron(conn, stack, args.cron_entries, args.cron_minutes)
    elif kind == "workflow":
        result = await workflows.run(conn, stack, args.workflow_width, args.workflow_chain, args.workflow_repeats)
    else:
        result = await pipeline.at(conn, stack, args.at_runs, args.at_ahead)
    if transport == "postgres":
        result["system"] = "taskmill-postgres"
    setup = stack.setup
    result["setup"] = {
        "transport": setup.transport,
        "processors": setup.processors,
        "concurrency": setup.concurrency,
        "distributors": setup.distributors,
        **({"queue_type": setup.queue_type} if setup.transport == "amqp" else {}),
    }
    return result


async def delete_broker_objects(prefix: str) -> None:
    conn = await aio_pika.connect(AMQP)
    try:
        await topology.delete(await conn.channel(), topology.Names(prefix))
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
