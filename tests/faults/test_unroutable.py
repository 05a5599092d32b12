"""The work queue deleted under a running stack: messages in it are lost, publishes fail, and nothing is lost."""

from __future__ import annotations

import asyncpg
import pytest

from tests.faults.harness import Stack
from tests.helpers import new_task, wait_until


@pytest.mark.slow
async def test_a_work_queue_deleted_mid_run_loses_no_run_and_refused_publishes_revert_then_go_through(
    stack: Stack, db: asyncpg.Connection
) -> None:
    work = stack.broker.names.work_queue
    await stack.start(distributor=2, processor=2)

    # 1. Deleted with runs in it, some held by the processors: those messages are gone with the queue. The
    #    processors' consumers are cancelled by the broker; they declare the queue again and consume on.
    first = [await new_task(db, f"first-{i}", "sleep", {"ms": 300}) for i in range(30)]

    async def some_done() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'succeeded'"))

    await wait_until(some_done, timeout=15, what="the first runs to finish")
    await stack.broker.delete_queue(work)
    await stack.quiesce()  # what was lost with the queue comes back through the rescuer once its lease ends

    # 2. Deleted with no processor to declare it again: the broker returns every publish (mandatory), the
    #    distributor reverts each run to scheduled and claims it again a little later.
    for processor in stack.live("processor"):
        await processor.terminate()
    await stack.broker.delete_queue(work)
    second, ids = await stack.refused_meanwhile(3, "every refused run to revert to scheduled", timeout=15)
    assert await stack.broker.depth(work) is None  # still no queue: nothing got through
    assert stack.target.calls == []
    assert any("reverted" in p.output() for p in stack.live("distributor"))

    # 3. The queue is back (a processor declares it when it starts): the next claim goes through.
    await stack.start(processor=2)
    await stack.quiesce()
    report = await stack.check({t.id: 1 for t in (*first, *second)})
    assert report.statuses == {"succeeded": len(first) + len(second)}
    for run in ids:
        path = await db.fetch("SELECT to_status::text FROM run_audit WHERE run_id = $1 ORDER BY at", run)
        moves = [r[0] for r in path]
        assert moves[:3] == ["scheduled", "queued", "scheduled"] and moves[-2:] == ["running", "succeeded"], moves
