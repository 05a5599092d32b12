from __future__ import annotations

import asyncpg
import pytest

from taskmill.client import schedule
from taskmill.models import TaskCreate


async def test_a_caller_that_rolls_back_has_scheduled_nothing(db: asyncpg.Connection) -> None:
    with pytest.raises(RuntimeError, match="the caller's own failure"):
        async with db.transaction():
            await db.execute("CREATE TEMP TABLE signups (id int)")
            await schedule(db, TaskCreate(name="reminder", type="noop"), created_by="signup-service")
            assert await db.fetchval("SELECT count(*) FROM task_schedule") == 1  # visible inside the transaction
            raise RuntimeError("the caller's own failure")
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0
    assert await db.fetchval("SELECT count(*) FROM task_schedule") == 0


async def test_a_caller_that_commits_has_scheduled_its_run(db: asyncpg.Connection) -> None:
    async with db.transaction():
        task = await schedule(db, TaskCreate(name="reminder", type="noop"), created_by="signup-service")
    row = await db.fetchrow("SELECT status::text, created_by FROM task_schedule WHERE task_id = $1", task.id)
    assert row is not None and tuple(row) == ("scheduled", "signup-service")
