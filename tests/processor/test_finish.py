"""Recording outcomes: one the database refuses does not hold back the rest of its batch."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from processor.record import _finish
from taskmill.db import create_pool
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import Outcome, Start, StartRequest, start_runs
from tests.helpers import new_task


def outcome(run: asyncpg.Record, result_json: str) -> Outcome:
    return Outcome(run["id"], 1, RunState.SUCCEEDED, result_json, None, datetime.now(UTC), 1.0, run["scheduled_time"])


async def test_an_unstorable_result_is_dropped_and_the_rest_of_the_batch_is_recorded(
    settings: Settings, db: asyncpg.Connection
) -> None:
    good = await new_task(db, "good", "noop")
    bad = await new_task(db, "bad", "noop")
    runs = await db.fetch("SELECT id, scheduled_time FROM task_schedule ORDER BY task_id")
    requests = [StartRequest(r["id"], 1, 30.0, r["scheduled_time"]) for r in runs]
    assert await start_runs(db, "w", requests) == [Start.WON, Start.WON]
    pool = await create_pool(settings.database_url)
    try:
        # \u0000 is valid JSON but PostgreSQL's jsonb refuses it.
        done = await _finish(pool, [outcome(runs[0], '{"ok": true}'), outcome(runs[1], '{"text": "a\\u0000b"}')])
    finally:
        await pool.close()
    assert done == [True, True]
    rows = await db.fetch(
        "SELECT t.name, s.status::text, r.result, r.error FROM task_schedule s JOIN tasks t ON t.id = s.task_id "
        "JOIN task_results r ON r.run_id = s.id ORDER BY t.id"
    )
    assert [r["name"] for r in rows] == [good.name, bad.name]
    assert (rows[0]["status"], rows[0]["result"], rows[0]["error"]) == ("succeeded", {"ok": True}, None)
    assert (rows[1]["status"], rows[1]["result"]) == ("succeeded", None)
    assert "result not stored" in rows[1]["error"]


async def test_a_stale_copy_batched_with_the_current_message_does_not_win(db: asyncpg.Connection) -> None:
    await new_task(db, "retried", "noop")
    row = await db.fetchrow("SELECT id, scheduled_time FROM task_schedule")

    assert row is not None

    run_id, at = row
    await db.execute("UPDATE task_schedule SET status = 'queued' WHERE id = $1", run_id)
    await db.execute("UPDATE task_schedule SET status = 'running', attempt = 1 WHERE id = $1", run_id)
    await db.execute("UPDATE task_schedule SET status = 'retrying' WHERE id = $1", run_id)
    stale, current = StartRequest(run_id, 1, 30.0, at), StartRequest(run_id, 2, 30.0, at)
    assert await start_runs(db, "w", [stale, current]) == [Start.LOST, Start.WON]
    assert await db.fetchval("SELECT attempt FROM task_schedule WHERE id = $1", run_id) == 2
