"""The fault scenarios' fixtures: a stack of role processes (tests/faults/harness.py) per test, on the test's own
database and broker prefix, every process reaped afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from taskmill.settings import Settings
from tests.faults.harness import Stack, view_of

# The private servers of the destructive scenarios (tests/faults/servers.py), registered here once so that the
# session-scoped ones are started once per session.
from tests.faults.servers import pg, pg_cluster, rabbit, rabbit_node  # noqa: F401


@pytest.fixture
async def stack(settings: Settings, db: asyncpg.Connection, tmp_path: Path) -> AsyncIterator[Stack]:
    opened = await Stack.open(settings, db, tmp_path, broker_view=view_of(settings))
    try:
        yield opened
    finally:
        await opened.close()
