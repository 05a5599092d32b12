"""`python -m bench workflow`: workflows through the real roles, defined and invoked through the API.

The workflow: a `start` step, a wide level of N noop steps that depend on it, a `join` that depends on all of them,
then a chain of C noop steps. Invoked R times, one after the other. It reports:
- the wide level: runs/s from its first start to its last finish (every step of a level is handed out at once);
- the hand-off: from a step's finish to its dependent's start along the chain (release in the recording
  transaction, NOTIFY, claim, publish, start), p50/p95/p99;
- the whole workflow run, created to ended.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx

from bench.database import truncate
from bench.pipeline import percentiles, reset
from bench.stack import Stack


def definition(width: int, chain: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"name": "start", "type": "noop"}]
    steps += [{"name": f"w{i}", "type": "noop", "depends_on": ["start"]} for i in range(width)]
    steps.append({"name": "join", "type": "noop", "depends_on": [f"w{i}" for i in range(width)]})
    prior = "join"
    for i in range(chain):
        steps.append({"name": f"c{i}", "type": "noop", "depends_on": [prior]})
        prior = f"c{i}"
    return {"name": "bench-workflow", "tasks": steps}


async def _ended(conn: asyncpg.Connection, run_id: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await conn.fetchval("SELECT status <> 'running' FROM workflow_runs WHERE id = $1", run_id):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"workflow run {run_id} did not end within {timeout_s} s")


HANDOFFS = """
SELECT (extract(epoch FROM d.started_at - u.finished_at) * 1000)::float8 AS ms
FROM run_links l
JOIN task_schedule u ON u.id = l.upstream_id
JOIN task_schedule d ON d.id = l.dependent_id
JOIN tasks t ON t.id = d.task_id
WHERE d.workflow_run_id = $1 AND t.name LIKE 'c%'
"""

WIDE = """
SELECT count(*) AS n, extract(epoch FROM max(s.finished_at) - min(s.started_at))::float8 AS s
FROM task_schedule s JOIN tasks t ON t.id = s.task_id WHERE s.workflow_run_id = $1 AND t.name LIKE 'w%'
"""


async def run(conn: asyncpg.Connection, stack: Stack, width: int, chain: int, repeats: int) -> dict[str, Any]:
    await reset(conn)
    await truncate(conn, "workflows, workflow_runs, run_links, run_children")
    headers = {"Authorization": f"Bearer {stack.token()}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=60) as client:
        created = await client.post("/workflows", json=definition(width, chain))
        if created.status_code != 201:
            raise RuntimeError(f"POST /workflows: {created.status_code} {created.text[:500]}")
        handoffs: list[float] = []
        wide_rates: list[float] = []
        totals: list[float] = []
        failed = 0
        for _ in range(repeats):
            invoked = await client.post("/workflows/bench-workflow/invoke")
            run_id = invoked.json()["id"]
            await _ended(conn, run_id, 300)
            row = await conn.fetchrow(
                "SELECT status, extract(epoch FROM finished_at - created_at)::float8 AS s FROM workflow_runs "
                "WHERE id = $1",
                run_id,
            )
            assert row is not None
            failed += row["status"] != "succeeded"
            totals.append(row["s"])
            handoffs += [r["ms"] for r in await conn.fetch(HANDOFFS, run_id)]
            wide = await conn.fetchrow(WIDE, run_id)
            assert wide is not None
            wide_rates.append(wide["n"] / wide["s"])
    wide_rates.sort()
    return {
        "workload": "workflow",
        "steps": width + chain + 2,
        "width": width,
        "chain": chain,
        "repeats": repeats,
        "failed": failed,
        "wide_level_runs_per_s_median": round(wide_rates[len(wide_rates) // 2]),
        "handoff_ms": percentiles(handoffs),
        "workflow_run_s": percentiles(totals),
    }
