"""A broker memory alarm (`rabbitmqctl set_vm_memory_high_watermark` set tiny, then back): the broker stops
reading from publishing connections, so publishes are not confirmed and their runs revert; consumers keep
draining what is already queued; once the alarm ends everything flows, and no run is lost or run twice (the
publishes that were stuck in the socket meanwhile arrive late, as duplicates the processors drop).
On the private node (tests/faults/servers.py)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from taskmill.settings import Settings
from tests.faults.servers import RabbitNode, fault_stack
from tests.helpers import new_task, wait_until

pytestmark = pytest.mark.slow


async def test_a_memory_alarm_blocks_publishers_loses_nothing_and_everything_flows_after_it(
    settings: Settings, db: asyncpg.Connection, rabbit: RabbitNode, tmp_path: Path
) -> None:
    async with fault_stack(settings, tmp_path, db=db, rabbit=rabbit) as stack:
        await stack.start(distributor=1, processor=2)
        before = [
            await new_task(db, f"before-{i}", "http", stack.target.payload(f"before-{i}", delay_ms=100))
            for i in range(30)
        ]

        async def some_done() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'succeeded'"))

        await wait_until(some_done, 20, what="the first runs to succeed")
        await rabbit.memory_alarm(True)

        async def alarmed() -> bool:
            return "memory" in await rabbit.alarms()

        await wait_until(alarmed, 20, interval=0.5, what="the memory alarm")
        # Not confirmed within the publish timeout: every one of them reverts, and none runs while the alarm lasts.
        during, _ = await stack.refused_meanwhile(20, "the unconfirmed publishes to revert their runs", hold_s=1)
        assert "memory" in await rabbit.alarms()

        await rabbit.memory_alarm(False)
        await stack.quiesce(timeout=90)
        assert [p for p in stack.processes if p.exited] == []
        report = await stack.check({t.id: 1 for t in (*before, *during)})
        assert report.statuses == {"succeeded": len(before) + len(during)}
        assert report.repeats == {}
