"""A processor's broker connection blackholed (tests/faults/proxy.py): the TCP connection stays open and nothing
gets through. Only heartbeats tell: the broker stops hearing the processor and drops its connection, handing
the deliveries it held to the other processor (which finds them started or finished and drops them); the
processor stops hearing the broker, gives the connection up and connects again. No run is lost or run twice.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from taskmill.settings import Settings
from tests.faults.harness import RoleProcess, Stack
from tests.faults.proxy import Proxy
from tests.faults.servers import RECOVERY_ENV, fault_stack
from tests.helpers import new_task, wait_until
from tests.services import free_port

pytestmark = pytest.mark.slow

HEARTBEAT_S = int(RECOVERY_ENV["TASKMILL_AMQP_HEARTBEAT_S"])


async def _dropped(port: int) -> float:
    """The processor's count of deliveries it dropped as already started, finished or stale."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    found = re.search(r"^taskmill_deliveries_dropped_total ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


async def _runs_on(stack: Stack, process: RoleProcess) -> int:
    n: int = await stack.db.fetchval("SELECT count(*) FROM task_schedule WHERE worker = $1", process.worker)
    return n


async def test_a_blackholed_broker_connection_is_noticed_by_heartbeats_and_its_deliveries_go_to_another_processor(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with fault_stack(settings, tmp_path, db=db) as stack:
        proxy = await Proxy.to(stack.settings.amqp_url)
        try:
            await stack.start(distributor=1)
            behind = await stack.add("processor", AMQP_URL=proxy.url(stack.settings.amqp_url))
            metrics = free_port()
            other = await stack.add("processor", TASKMILL_METRICS_PORT=str(metrics))
            tasks = [
                await new_task(db, f"t{i}", "http", stack.target.payload(f"t{i}", delay_ms=1500), timeout_seconds=5)
                for i in range(40)
            ]

            async def behind_busy() -> bool:
                n: int = await db.fetchval(
                    "SELECT count(*) FROM task_schedule WHERE status = 'running' AND worker = $1", behind.worker
                )
                return n >= 2

            await wait_until(behind_busy, 20, what="the processor behind the proxy to run something")
            proxy.blackhole()
            cut_off = time.monotonic()

            # The broker drops the silent connection and redelivers what it held to the other processor, which
            # finds those runs started (or already recorded) by the first one and drops them.
            async def redelivered() -> bool:
                return await _dropped(metrics) >= 1

            await wait_until(redelivered, 6 * HEARTBEAT_S + 10, interval=0.5, what="the broker to redeliver")

            # The processor notices too, by the heartbeats it no longer gets, and drops the connection itself.
            async def noticed() -> bool:
                return "was stuck" in behind.output(100_000)

            await wait_until(noticed, 6 * HEARTBEAT_S + 10, interval=0.5, what="the processor to notice")
            print(f"blackholed connection given up after {time.monotonic() - cut_off:.1f} s")
            proxy.restore()

            # It connects again (through the proxy) and consumes on, with no restart.
            await stack.wait_ready([behind, other], timeout=30)
            assert proxy.accepted >= 2
            later = [
                await new_task(db, f"later-{i}", "http", stack.target.payload(f"later-{i}", delay_ms=300))
                for i in range(16)
            ]
            await stack.quiesce(timeout=60)
            assert [p for p in stack.processes if p.exited] == []
            report = await stack.check({t.id: 1 for t in (*tasks, *later)})
            assert report.statuses == {"succeeded": len(tasks) + len(later)}
            assert report.repeats == {}
            # Each run started once: none needed the rescuer, the first processor's runs were recorded by it.
            assert await db.fetchval("SELECT max(attempt) FROM task_schedule") == 1
            assert await _runs_on(stack, behind) > 0 and await _runs_on(stack, other) > 0
        finally:
            await proxy.close()
