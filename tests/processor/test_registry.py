"""A processor registers at start with the isolation its command runs get, and leaves when it stops."""

from __future__ import annotations

import asyncpg

import processor.service
from processor.service import worker_name
from taskmill.settings import Settings
from tests.helpers import running, wait_until


async def test_a_processor_registers_its_isolation_and_leaves_when_it_stops(
    settings: Settings, db: asyncpg.Connection
) -> None:
    async with running(processor.service.run, settings):

        async def registered() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM processors"))

        await wait_until(registered, 10, what="the processor to register")
        row = await db.fetchrow("SELECT worker, command_isolation FROM processors")
        assert row is not None
        assert row["worker"] == worker_name()
        assert row["command_isolation"].startswith("none: commands run unconfined")  # the suite's default
    assert await db.fetchval("SELECT count(*) FROM processors") == 0
