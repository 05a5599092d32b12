"""Workflows and subtasks, run by real role processes (tests/faults/harness.py) importing tests/handlers/flows.py,
defined through the API in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.conftest import SECRET, api_settings, app_client, bearer, client  # noqa: F401 (fixtures)
from tests.faults import conftest as faults
from tests.faults.harness import Stack
from tests.helpers import wait_until

stack = faults.stack  # the fault scenarios' stack of role processes (a fixture)
FLOWS = ("--import", "tests.handlers.flows")
WRITE = bearer("tasks:read tasks:write")


@pytest.fixture(autouse=True)
async def steps_done(db: asyncpg.Connection) -> None:
    """Where the flows.step handler records its runs, in its own transaction."""
    await db.execute("CREATE TABLE steps_done (run_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())")


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(stack.settings.model_copy(update={"jwt_secret": SECRET})) as served:
        yield served


async def processors(stack: Stack, n: int, concurrency: int = 1) -> None:
    """`n` processors serving the flows handlers, each `concurrency` runs at a time, once they registered."""
    for _ in range(n):
        await stack.add("processor", *FLOWS, "--concurrency", str(concurrency))
    await registered(stack)


async def registered(stack: Stack) -> None:
    """Until a processor has registered the flows handlers."""

    async def found() -> bool:
        n: int = await stack.db.fetchval("SELECT count(*) FROM task_types WHERE name LIKE 'flows.%'")
        return n == 5

    await wait_until(found, timeout=20, what="the flows handlers to be registered")


async def finished_run(db: asyncpg.Connection, run_id: int, timeout: float = 40) -> str:
    """The status of a workflow run once it has ended."""

    async def ended() -> bool:
        status: str = await db.fetchval("SELECT status FROM workflow_runs WHERE id = $1", run_id)
        return status != "running"

    await wait_until(ended, timeout=timeout, interval=0.1, what=f"workflow run {run_id} to end")
    status: str = await db.fetchval("SELECT status FROM workflow_runs WHERE id = $1", run_id)
    return status


async def ended_run(
    db: asyncpg.Connection, run_id: int, timeout: float = 40, logs: Callable[[], str] | None = None
) -> asyncpg.Record:
    """A run (task_schedule row) once it has ended. Timed out, it says where every run stands, and `logs()`."""
    ended = ("succeeded", "failed", "dead", "cancelled", "skipped")

    async def done() -> bool:
        status = await db.fetchval("SELECT status::text FROM task_schedule WHERE id = $1", run_id)
        return status in ended

    try:
        await wait_until(done, timeout=timeout, interval=0.1, what=f"run {run_id} to end")
    except AssertionError as exc:
        runs = await db.fetch(
            "SELECT id, parent_id, status::text, attempt, worker, error FROM task_schedule ORDER BY id"
        )
        where = "\n".join(str(tuple(r)) for r in runs)
        raise AssertionError(f"{exc}\n{where}\n{logs() if logs else ''}") from None
    row = await db.fetchrow("SELECT * FROM task_schedule WHERE id = $1", run_id)
    assert row is not None
    return row


def step(name: str, *after: str, **payload: Any) -> dict[str, Any]:
    return {"name": name, "type": "flows.step", "payload": payload, "depends_on": list(after)}
