from __future__ import annotations

import asyncpg

from taskmill.states import RunState, ScheduleKind


async def test_run_states_match_the_database_enum(db: asyncpg.Connection) -> None:
    values = await db.fetchval("SELECT enum_range(NULL::run_status)::text[]")
    assert values == [s.value for s in RunState]


async def test_schedule_kinds_match_the_database_enum(db: asyncpg.Connection) -> None:
    values = await db.fetchval("SELECT enum_range(NULL::schedule_kind)::text[]")
    assert values == [k.value for k in ScheduleKind]


async def test_the_database_refuses_an_illegal_transition(db: asyncpg.Connection) -> None:
    task_id = await db.fetchval(
        "INSERT INTO tasks (name, type, schedule_kind) VALUES ('t', 'noop', 'immediate') RETURNING id"
    )
    run_id = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now()) RETURNING id", task_id
    )
    try:
        await db.execute("UPDATE task_schedule SET status = 'succeeded' WHERE id = $1", run_id)
    except asyncpg.CheckViolationError as exc:
        assert "scheduled -> succeeded" in str(exc)
    else:
        raise AssertionError("scheduled -> succeeded was accepted")
    assert await db.fetchval("SELECT status::text FROM task_schedule WHERE id = $1", run_id) == "scheduled"


async def test_every_status_change_is_audited(db: asyncpg.Connection) -> None:
    task_id = await db.fetchval(
        "INSERT INTO tasks (name, type, schedule_kind) VALUES ('t', 'noop', 'immediate') RETURNING id"
    )
    run_id = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now()) RETURNING id", task_id
    )
    await db.execute("UPDATE task_schedule SET status = 'queued' WHERE id = $1", run_id)
    await db.execute("UPDATE task_schedule SET status = 'running', attempt = 1 WHERE id = $1", run_id)
    rows = await db.fetch(
        "SELECT from_status::text, to_status::text FROM run_audit WHERE run_id = $1 ORDER BY at", run_id
    )
    assert [tuple(r) for r in rows] == [(None, "scheduled"), ("scheduled", "queued"), ("queued", "running")]
