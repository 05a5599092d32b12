"""`pg_terminate_backend` on every connection the roles hold, again and again while runs flow (what a failover,
a pooler restart or an operator does): pools, LISTEN connections and the processor's batched statements all
reconnect, no process restarts, and no run is lost or run twice. Only the test's own database is touched, so the
shared server is fine for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from taskmill.settings import Settings
from tests.faults.servers import fault_stack, terminate_backends
from tests.helpers import new_task, wait_until

pytestmark = pytest.mark.slow


async def test_the_roles_connections_terminated_repeatedly_mid_flow_lose_no_run_and_every_role_reconnects(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with fault_stack(settings, tmp_path, db=db) as stack:
        await stack.start(scheduler=1, distributor=2, processor=2)
        tasks = [
            await new_task(db, f"t{i}", "http", stack.target.payload(f"t{i}", delay_ms=200), timeout_seconds=10)
            for i in range(80)
        ]

        async def flowing() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'succeeded'"))

        await wait_until(flowing, 30, what="the first runs to succeed")
        ended = []
        for _ in range(4):
            ended.append(await terminate_backends(db))
            await asyncio.sleep(1)
        assert min(ended) >= 5, ended  # each time, at least the pools and the LISTEN connections of the roles

        later = [await new_task(db, f"later-{i}", "http", stack.target.payload(f"later-{i}")) for i in range(10)]
        await stack.wait_ready(stack.live(), timeout=30)  # consuming, and listening again on both channels
        await stack.quiesce(timeout=90)
        assert [p for p in stack.processes if p.exited] == []
        report = await stack.check({t.id: 1 for t in (*tasks, *later)})
        print(f"backends terminated each time: {ended}")
        assert report.statuses == {"succeeded": len(tasks) + len(later)}
        assert report.repeats == {}
