"""At-least-once delivery taken to ten: the same run message delivered ten times executes once."""

from __future__ import annotations

import asyncpg
import pytest

from taskmill.store.runs import claim_due
from tests.faults.harness import Stack
from tests.helpers import new_task
from tests.transports import BOTH

COPIES = 10


@pytest.mark.slow
@BOTH
async def test_a_run_message_delivered_ten_times_to_two_processors_executes_once(
    stack: Stack, db: asyncpg.Connection
) -> None:
    await stack.start(processor=2)
    http = await new_task(db, "ten-calls", "http", stack.target.payload("ten-calls", delay_ms=200))
    command = await new_task(db, "ten-commands", "command", stack.commands.payload(sleep_s=0.2))
    # Claimed here, as a distributor would (the runs are queued); then each message published ten times, the copies
    # of the two runs interleaved, so both processors hold copies of both at once.
    runs = await claim_due(db, 10, stack.settings.queued_lease_s)
    assert len(runs) == 2
    for _ in range(COPIES):
        for run in runs:
            await stack.broker.publish(run.body, run.type, message_id=str(run.run_id))

    await stack.quiesce()
    report = await stack.check({http.id: 1, command.id: 1})
    assert report.statuses == {"succeeded": 2}
    assert report.repeats == {}
    assert [c.status for c in stack.target.calls_to("ten-calls")] == [200]
    assert len(stack.commands.entries()) == 1
    for run in runs:
        starts = await db.fetchval(
            "SELECT count(*) FROM run_audit WHERE run_id = $1 AND to_status = 'running'", run.run_id
        )
        assert starts == 1
        assert await db.fetchval("SELECT attempt FROM task_schedule WHERE id = $1", run.run_id) == 1
