"""PostgreSQL goes away under a running stack and comes back, on the private cluster (tests/faults/servers.py):
every role recovers without a process restart (pools, the LISTEN connections, the processor's batched
statements), and a processor whose outcomes cannot be recorded holds their deliveries unacked until it can.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from taskmill.settings import Settings
from tests.faults.servers import PgCluster, RabbitNode, fault_stack
from tests.helpers import new_task, statuses, wait_until
from tests.transports import BOTH

pytestmark = pytest.mark.slow


@BOTH
async def test_a_database_restarted_at_once_mid_flow_loses_no_run_and_every_role_carries_on(
    settings: Settings, pg: PgCluster, tmp_path: Path
) -> None:
    async with fault_stack(settings, tmp_path, pg=pg) as stack:
        await stack.start(scheduler=1, distributor=2, processor=2)
        tasks = [
            await new_task(stack.db, f"t{i}", "http", stack.target.payload(f"t{i}", delay_ms=300), timeout_seconds=10)
            for i in range(60)
        ]

        async def flowing() -> bool:
            return (await statuses(stack.db)).get("succeeded", 0) >= 10

        await wait_until(flowing, 30, what="the first runs to succeed")
        await pg.restart("immediate")  # every backend killed at once, crash recovery, back within a second
        await stack.reconnect_db()

        # Tasks created after it: the distributors hear of them once their LISTEN connections are back.
        after = [await new_task(stack.db, f"after-{i}", "http", stack.target.payload(f"after-{i}")) for i in range(20)]
        await stack.wait_ready(stack.live(), timeout=30)  # consuming, and listening again on both channels
        await stack.quiesce(timeout=90)
        assert [p for p in stack.processes if p.exited] == []
        report = await stack.check({t.id: 1 for t in (*tasks, *after)})
        assert report.statuses == {"succeeded": len(tasks) + len(after)}
        assert report.repeats == {}


async def _unacked(rabbit: RabbitNode) -> int:
    """Deliveries held unacked on every channel of the private node (channel counts are current; a quorum
    queue's own count is updated on a tick)."""
    out = await rabbit.ctl("list_channels", "--no-table-headers", "messages_unacknowledged")
    return sum(int(line) for line in out.split() if line.strip().isdigit())


async def test_outcomes_that_cannot_be_recorded_are_held_unacked_and_recorded_once_the_database_is_back(
    settings: Settings, pg: PgCluster, rabbit: RabbitNode, tmp_path: Path
) -> None:
    async with fault_stack(settings, tmp_path, pg=pg, rabbit=rabbit) as stack:
        await stack.start(distributor=1, processor=2)  # four runs at once each
        tasks = [
            await new_task(stack.db, f"t{i}", "http", stack.target.payload(f"t{i}", delay_ms=2000), timeout_seconds=10)
            for i in range(8)
        ]

        async def all_running() -> bool:
            return (await statuses(stack.db)).get("running", 0) == len(tasks)

        await wait_until(all_running, 20, what="every run to start")
        started = {r["id"]: r["worker"] for r in await stack.db.fetch("SELECT id, worker FROM task_schedule")}
        await pg.stop("immediate")

        # The calls complete while the database is away: the outcomes cannot be recorded, so nothing is acked.
        async def calls_done() -> bool:
            return sum(1 for c in stack.target.calls if c.status is not None) == len(tasks)

        await wait_until(calls_done, 15, what="every call to be answered")
        held = await _unacked(rabbit)
        assert held == len(tasks), f"{held} deliveries unacked while {len(tasks)} outcomes wait to be recorded"

        await pg.start()
        await stack.reconnect_db()

        async def recorded() -> bool:
            return (await statuses(stack.db)).get("succeeded", 0) == len(tasks)

        await wait_until(recorded, 20, what="the held outcomes to be recorded")
        rows = await stack.db.fetch("SELECT id, worker, attempt FROM task_schedule")
        # Recorded by the processor that ran each, on the first attempt: held, not lost to the rescuer.
        assert {r["id"]: (r["worker"], r["attempt"]) for r in rows} == {i: (w, 1) for i, w in started.items()}

        async def acked() -> bool:
            return await _unacked(rabbit) == 0

        await wait_until(acked, 20, interval=0.5, what="the held deliveries to be acked")
        more = [await new_task(stack.db, f"more-{i}", "noop") for i in range(5)]
        await stack.quiesce(timeout=60)
        assert [p for p in stack.processes if p.exited] == []
        report = await stack.check({t.id: 1 for t in (*tasks, *more)})
        assert report.statuses == {"succeeded": len(tasks) + len(more)}
        assert report.repeats == {}
