"""TASKMILL_MAX_TIMEOUT_S bounds a run's timeout both ways: the API refuses a task asking more, gives a task naming
none the smaller of 30 s and the maximum, and a processor cuts every run at its own maximum."""

from __future__ import annotations

import asyncpg
import pytest

import distributor.service
import processor.service
from api.errors import PROBLEM
from taskmill.settings import Settings
from tests.api.conftest import SECRET, app_client, bearer
from tests.helpers import new_task, statuses


@pytest.mark.parametrize(("maximum", "default"), [(300.0, 30.0), (10.0, 10.0)])
async def test_the_setting_raises_or_lowers_the_largest_timeout_and_the_default_follows(
    settings: Settings, maximum: float, default: float
) -> None:
    configured = settings.model_copy(update={"jwt_secret": SECRET, "max_timeout_s": maximum})
    async with app_client(configured) as client:
        named = await client.post("/tasks", json={"name": "named", "type": "noop", "timeout_seconds": maximum},
                                  headers=bearer())  # fmt: skip
        unnamed = await client.post("/tasks", json={"name": "unnamed", "type": "noop"}, headers=bearer())
        over = await client.post(
            "/tasks", json={"name": "over", "type": "noop", "timeout_seconds": maximum + 1}, headers=bearer()
        )
        bulk = await client.post(
            "/tasks/bulk",
            json=[{"name": "b0", "type": "noop"}, {"name": "b1", "type": "noop", "timeout_seconds": maximum + 1}],
            headers=bearer(),
        )
    assert (named.status_code, named.json()["timeout_seconds"]) == (201, maximum)
    assert (unnamed.status_code, unnamed.json()["timeout_seconds"]) == (201, default)
    reason = f"is more than this installation allows ({maximum:g} s, TASKMILL_MAX_TIMEOUT_S)"
    assert (over.status_code, over.headers["content-type"]) == (422, PROBLEM)
    assert over.json()["errors"] == [{"field": "timeout_seconds", "reason": reason}]
    assert bulk.status_code == 422
    assert bulk.json()["errors"] == [{"field": "1.timeout_seconds", "reason": reason}]


async def test_a_processor_cuts_a_run_at_its_own_maximum(settings: Settings, db: asyncpg.Connection) -> None:
    await new_task(db, "long", "sleep", {"ms": 5000}, timeout_seconds=5)
    await distributor.service.run(settings, until_idle=True)
    await processor.service.run(settings.model_copy(update={"max_timeout_s": 0.5}), until_idle=True)
    assert await statuses(db) == {"failed": 1}
    assert await db.fetchval("SELECT error FROM task_schedule") == "timed out after 0.5 s"
