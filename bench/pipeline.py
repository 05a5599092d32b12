"""taskmill's own pipeline workloads, created through the public interface (POST /tasks/bulk) as a user would:

burst  N noop tasks to run now: from the first request to the last recorded outcome, runs/s; what each run cost
       (CPU of every role, of PostgreSQL and of RabbitMQ; rows, WAL, index entries read), measured during the burst.
at     N noop tasks due at one instant ahead: start lateness from the due time to the recorded start.
cron   N every-minute cron tasks (the scheduler materializes their runs) over M whole minutes: start lateness.

Both check that no run was lost or run twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import numpy as np

from bench import cost
from bench.database import truncate
from bench.stack import Stack

BULK = 10_000  # the API's limit per request
TERMINAL = "('succeeded', 'failed', 'dead', 'cancelled', 'skipped')"


async def reset(conn: asyncpg.Connection) -> None:
    await truncate(conn)


async def create(stack: Stack, tasks: list[dict[str, Any]]) -> None:
    """Through POST /tasks/bulk, a request of up to 10,000 at a time (two in flight: the API has a pool)."""
    headers = {"Authorization": f"Bearer {stack.token()}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=300) as client:

        async def post(chunk: list[dict[str, Any]]) -> None:
            response = await client.post("/tasks/bulk", json=chunk)
            if response.status_code != 201:
                raise RuntimeError(f"POST /tasks/bulk: {response.status_code} {response.text[:500]}")

        await asyncio.gather(*(post(tasks[i : i + BULK]) for i in range(0, len(tasks), BULK)))


# By a sequential scan (`status::text`): the bench's own polling must not show in the index counters it reports.
ENDED = f"SELECT count(*) FROM task_schedule WHERE status::text IN {TERMINAL}"


async def wait_terminal(conn: asyncpg.Connection, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await conn.fetchval(ENDED) >= n:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{n} runs did not all end within {timeout_s} s")


async def integrity(conn: asyncpg.Connection, n: int) -> dict[str, int]:
    """Lost: runs that did not succeed. Duplicates: runs started, or results recorded, more than once."""
    succeeded = await conn.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'succeeded'")
    started_again = await conn.fetchval("SELECT count(*) FROM task_schedule WHERE attempt > 1")
    extra_results = await conn.fetchval("SELECT count(*) - count(DISTINCT run_id) FROM task_results")
    return {"lost": n - succeeded, "duplicates": started_again + extra_results}


def percentiles(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {k: round(float(np.percentile(a, q)), 1) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))} | {
        "max": round(float(a.max()), 1)
    }


async def burst(
    conn: asyncpg.Connection,
    stack: Stack,
    n: int,
    groups: dict[str, list[int]],
    *,
    counters: bool = True,
    fresh: bool = False,
) -> dict[str, Any]:
    """`counters`: wait for the database's table and index counters, and report them. `fresh`: the database was
    emptied before the stack started (no reset under the roles' feet)."""
    if not fresh:
        await reset(conn)
    tasks = [{"name": f"burst-{i}", "type": "noop"} for i in range(n)]
    before = await cost.snapshot(conn, groups)
    start = await conn.fetchval("SELECT clock_timestamp()")
    await create(stack, tasks)
    await wait_terminal(conn, n, 900)
    end = await conn.fetchval("SELECT max(finished_at) FROM task_schedule")
    cpu_after = cost.cpu(groups)
    if counters:
        await asyncio.sleep(11)  # an idle backend flushes its table and index counters within 10 s
    after = cost.with_cpu(await cost.snapshot(conn, groups), cpu_after)
    wall = (end - start).total_seconds()
    spent = await cost.cost(conn, before, after, n)
    line = {
        "workload": "burst",
        "runs": n,
        "wall_s": round(wall, 2),
        "runs_per_s": round(n / wall),
        **await integrity(conn, n),
        **spent,
        "rss_mb": stack.rss_mb(),
    }
    if counters:
        line["index_check"] = cost.index_check(spent["index_reads"])
    else:  # read too soon to be whole
        del line["rows_per_run"], line["index_reads"]
    return line


async def at(conn: asyncpg.Connection, stack: Stack, n: int, ahead_s: float) -> dict[str, Any]:
    await reset(conn)
    due: datetime = await conn.fetchval("SELECT date_trunc('second', now()) + make_interval(secs => $1)", ahead_s)
    tasks = [{"name": f"at-{i}", "type": "noop", "schedule": {"kind": "once", "at": due.isoformat()}} for i in range(n)]
    await create(stack, tasks)
    wait = (due - await conn.fetchval("SELECT now()")).total_seconds()
    if wait < 1:
        raise RuntimeError(f"creating {n} tasks took longer than {ahead_s} s: raise --at-ahead")
    await asyncio.sleep(wait)
    await wait_terminal(conn, n, 600)
    late = await conn.fetch(
        "SELECT (extract(epoch FROM started_at - scheduled_time) * 1000)::float8 AS ms FROM task_schedule"
    )
    return {
        "workload": "at",
        "runs": n,
        "due_in_s": round(wait, 1),
        "lateness_ms": percentiles([r["ms"] for r in late]),
        **await integrity(conn, n),
    }


async def cron(conn: asyncpg.Connection, stack: Stack, n: int, minutes: int) -> dict[str, Any]:
    """`n` tasks on `* * * * *`, measured over the `minutes` whole minutes after the one they were created in."""
    await reset(conn)
    await create(stack, [{"name": f"cron-{i}", "type": "noop", "schedule": {"kind": "cron", "cron": "* * * * *"}}
                         for i in range(n)])  # fmt: skip
    first: datetime = await conn.fetchval("SELECT date_trunc('minute', now()) + interval '1 minute'")
    last = first + timedelta(minutes=minutes)
    wait = (last - await conn.fetchval("SELECT now()")).total_seconds()
    await asyncio.sleep(wait + 1)
    expected = n * minutes
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = await conn.fetchval(
            f"SELECT count(*) FROM task_schedule WHERE scheduled_time >= $1 AND scheduled_time < $2 "
            f"AND status::text IN {TERMINAL}",
            first,
            last,
        )
        if done >= expected:
            break
        await asyncio.sleep(0.2)
    window = "FROM task_schedule WHERE scheduled_time >= $1 AND scheduled_time < $2"
    late = await conn.fetch(
        f"SELECT (extract(epoch FROM started_at - scheduled_time) * 1000)::float8 AS ms {window} "
        "AND started_at IS NOT NULL",
        first,
        last,
    )
    succeeded = await conn.fetchval(f"SELECT count(*) {window} AND status = 'succeeded'", first, last)
    return {
        "workload": "cron",
        "tasks": n,
        "minutes": minutes,
        "runs": len(late),
        "lateness_ms": percentiles([r["ms"] for r in late]),
        "lost": expected - succeeded,
        "duplicates": await conn.fetchval("SELECT count(*) FROM task_schedule WHERE attempt > 1"),
    }
