"""The broker goes away with runs in flight and comes back (`rabbitmqctl stop`, then a fresh start of the node):
publishes meanwhile fail and their runs revert to scheduled, every role reconnects by itself (no process
restarts), the consumers come back, and no run is lost or run twice. On the private node (tests/faults/servers.py).
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from taskmill.settings import Settings
from tests.faults.servers import RabbitNode, fault_stack
from tests.helpers import new_task, statuses, wait_until

pytestmark = pytest.mark.slow


async def test_a_broker_stopped_and_started_with_200_runs_in_flight_loses_none_and_the_roles_reconnect_alone(
    settings: Settings, db: asyncpg.Connection, rabbit: RabbitNode, tmp_path: Path
) -> None:
    async with fault_stack(settings, tmp_path, db=db, rabbit=rabbit) as stack:
        await stack.start(distributor=2, processor=2)
        tasks = [
            await new_task(db, f"t{i}", "http", stack.target.payload(f"t{i}", delay_ms=100), timeout_seconds=5)
            for i in range(200)
        ]

        async def flowing() -> bool:
            return (await statuses(db)).get("succeeded", 0) >= 20

        await wait_until(flowing, 30, what="the first runs to succeed")
        in_flight = 200 - (await statuses(db)).get("succeeded", 0)
        await rabbit.stop()

        # Runs that fall due while the broker is away: their publishes fail and they go back to scheduled.
        during, _ = await stack.refused_meanwhile(10, "every publish during the outage to revert its run")

        await rabbit.start()
        await stack.wait_ready(stack.live("processor"), timeout=60)  # both consume again, on their own
        await stack.quiesce(timeout=120)
        assert [p for p in stack.processes if p.exited] == []  # nobody restarted, nobody died
        report = await stack.check({t.id: 1 for t in (*tasks, *during)})
        print(f"runs in flight when the broker stopped: {in_flight}")
        assert report.statuses == {"succeeded": len(tasks) + len(during)}
        assert report.repeats == {}
