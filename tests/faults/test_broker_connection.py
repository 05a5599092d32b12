"""The broker connection every role opens: heartbeats and a reconnect interval from the settings, and what
`rabbitmqctl close_all_connections` (a broker that drops every client at once) does to a running stack."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from taskmill.broker import connect
from taskmill.settings import Settings
from tests.faults.servers import RabbitNode, fault_stack
from tests.helpers import new_task, wait_until


async def test_a_role_connection_negotiates_the_configured_heartbeat_and_reconnect_interval(
    settings: Settings, rabbit: RabbitNode
) -> None:
    configured = settings.model_copy(update={"amqp_url": rabbit.url, "amqp_heartbeat_s": 7, "amqp_reconnect_s": 0.3})
    connection = await connect(configured, "taskmill-heartbeat-check")
    try:
        # The broker's own view: it drops the client after two heartbeats it did not hear.
        mine = [c for c in await rabbit.connections() if c["connection_name"] == "taskmill-heartbeat-check"]
        assert [c["timeout"] for c in mine] == ["7"], mine
        assert getattr(connection, "reconnect_interval", None) == 0.3
    finally:
        await connection.close()


@pytest.mark.slow
async def test_every_connection_closed_by_the_broker_comes_back_and_no_run_is_lost_or_run_twice(
    settings: Settings, db: asyncpg.Connection, rabbit: RabbitNode, tmp_path: Path
) -> None:
    async with fault_stack(settings, tmp_path, db=db, rabbit=rabbit) as stack:
        await stack.start(distributor=2, processor=2)
        work = stack.broker.names.work_queue
        tasks = [
            await new_task(db, f"t{i}", "http", stack.target.payload(f"t{i}", delay_ms=300), timeout_seconds=5)
            for i in range(60)
        ]

        async def some_running() -> bool:
            n: int = await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'running'")
            return n >= 4

        await wait_until(some_running, 20, what="runs in flight")
        before = {c["name"] for c in await rabbit.connections()}
        await rabbit.close_all_connections()

        # Every role connection comes back on its own, none of the processes restarted.
        async def reconnected() -> bool:
            now = [c for c in await rabbit.connections() if c["connection_name"].startswith("taskmill-")]
            return len(now) >= 4 and not {c["name"] for c in now} & before

        await wait_until(reconnected, 30, interval=0.5, what="the roles to reconnect")
        await stack.wait_ready(stack.live("processor"))  # both consume again
        assert all(not p.exited for p in stack.processes)

        await stack.quiesce()
        report = await stack.check({t.id: 1 for t in tasks})
        assert report.statuses == {"succeeded": len(tasks)}
        assert report.repeats == {}
        assert await stack.broker.ready(work) == 0
