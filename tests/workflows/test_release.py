"""A run that waits for others (a workflow step, a reduce) is due once they released it: its start lateness counts
from then (its `released_at`), not from its workflow run's time, so the lateness histogram and its p99 alert see the
pipeline's delay, not the wait for dependencies."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

import distributor.service
import processor.service
from taskmill.messages import read_runs
from taskmill.settings import Settings
from taskmill.store.runs import claim_due
from tests.api.conftest import api_settings, client  # noqa: F401 (fixtures)
from tests.helpers import running, wait_until
from tests.workflows.conftest import WRITE


def _lateness() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("taskmill_start_lateness_seconds_count") or 0.0
    total = REGISTRY.get_sample_value("taskmill_start_lateness_seconds_sum") or 0.0
    return count, total


async def _workflow(client: httpx.AsyncClient, name: str) -> int:  # noqa: F811
    body = {
        "name": name,
        "tasks": [
            {"name": "first", "type": "sleep", "payload": {"ms": 2000}},
            {"name": "then", "type": "noop", "depends_on": ["first"]},
        ],
    }
    assert (await client.post("/workflows", json=body, headers=WRITE)).status_code == 201
    invoked = await client.post(f"/workflows/{name}/invoke", headers=WRITE)
    assert invoked.status_code == 201, invoked.text
    run_id: int = invoked.json()["id"]
    return run_id


async def test_a_step_released_by_its_dependency_carries_its_release_in_its_message(
    client: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
) -> None:
    wrun = await _workflow(client, "released")
    (first,) = await claim_due(pool, 10, 60)
    await db.execute("UPDATE task_schedule SET status = 'running', attempt = 1 WHERE id = $1", first.run_id)
    ended = await db.fetchval(
        "UPDATE task_schedule SET status = 'succeeded', finished_at = now() WHERE id = $1 RETURNING clock_timestamp()",
        first.run_id,
    )
    (then,) = await claim_due(pool, 10, 60)
    (message,) = read_runs(then.body)
    planned = await db.fetchval("SELECT scheduled_time FROM workflow_runs WHERE id = $1", wrun)
    assert message.scheduled_time == planned
    assert message.released_at is not None and message.released_at >= ended
    assert message.due_at() == message.released_at


@pytest.mark.timing
async def test_a_steps_start_lateness_leaves_out_its_wait_for_the_step_before(
    client: httpx.AsyncClient,  # noqa: F811
    settings: Settings,
    db: asyncpg.Connection,
) -> None:
    count, total = _lateness()
    wrun = await _workflow(client, "timed")
    async with running(distributor.service.run, settings), running(processor.service.run, settings):

        async def done() -> bool:
            return bool(await db.fetchval("SELECT status = 'succeeded' FROM workflow_runs WHERE id = $1", wrun))

        await wait_until(done, timeout=20, what="the workflow run to succeed")
    after_count, after_total = _lateness()
    assert after_count == count + 2
    # `then` started some 2 s after the workflow run's time, right after `first` released it.
    assert after_total - total < 1.0, after_total - total
