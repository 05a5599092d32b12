"""The days of the partitioned tables: prepared ahead, a late day's rows moved out of the default partition, old
days dropped whole while a run not yet over survives them; and an installation migrated from before partitions
keeps every row."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from scheduler.janitor import tend_days
from taskmill.db import Connection
from taskmill.migrate import migrate, migration_files
from taskmill.settings import Settings
from taskmill.store.partitions import day_name, partitions, prepare, retire
from tests import services
from tests.helpers import new_task


async def _today(db: Connection) -> date:
    now: datetime = await db.fetchval("SELECT now()")
    return now.astimezone(UTC).date()


async def _where(db: asyncpg.Connection, table: str, key: str, value: object) -> str:
    """The partition holding the row of `table` whose `key` is `value`."""
    name: str = await db.fetchval(f"SELECT tableoid::regclass::text FROM {table} WHERE {key} = $1", value)
    return name


async def test_the_days_ahead_are_prepared_once_and_a_late_days_rows_leave_the_default_partition(
    db: asyncpg.Connection,
) -> None:
    today = await _today(db)
    assert await prepare(db, today, 14) == []  # the migration prepared them already
    task = await new_task(db, "far", "noop")
    far_day = today + timedelta(days=30)
    far = datetime(far_day.year, far_day.month, far_day.day, 9, tzinfo=UTC)
    run_id = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, $2) RETURNING id", task.id, far
    )
    assert await _where(db, "task_schedule", "id", run_id) == "task_schedule_default"
    audit_rows = await db.fetchval("SELECT count(*) FROM run_audit WHERE run_id = $1", run_id)

    made = await prepare(db, today, 30)
    assert day_name("task_schedule", far_day) in made and len(made) == 16 * 3  # days 15 to 30
    assert await _where(db, "task_schedule", "id", run_id) == day_name("task_schedule", far_day)
    # Moved as it was: no trigger took it for a new run.
    assert await db.fetchval("SELECT count(*) FROM run_audit WHERE run_id = $1", run_id) == audit_rows
    assert await prepare(db, today, 30) == []


async def test_days_past_the_retention_go_whole_but_a_run_not_yet_over_survives_with_its_results(
    db: asyncpg.Connection,
) -> None:
    today = await _today(db)
    task = await new_task(db, "old", "noop")
    long_ago = today - timedelta(days=100)
    await prepare(db, long_ago, 2)  # the days of back then, as they were when they were today
    old_day = datetime(long_ago.year, long_ago.month, long_ago.day, 12, tzinfo=UTC)
    ended, stuck = [
        r[0]
        for r in await db.fetch(
            "INSERT INTO task_schedule (task_id, scheduled_time, status, finished_at) VALUES "
            "($1, $2, 'scheduled', NULL), ($1, $2 + interval '1 s', 'scheduled', NULL) RETURNING id",
            task.id,
            old_day,
        )
    ]
    await db.execute("UPDATE task_schedule SET status = 'cancelled', finished_at = $2 WHERE id = $1", ended, old_day)
    await db.execute(
        "INSERT INTO task_results (run_id, attempt, status, finished_at, scheduled_time) "
        "SELECT id, 1, 'failed', $2, scheduled_time FROM task_schedule WHERE id = ANY($1::bigint[])",
        [ended, stuck],
        old_day,
    )
    assert await _where(db, "task_schedule", "id", stuck) == day_name("task_schedule", long_ago)

    retired = await retire(db, datetime.now(UTC) - timedelta(days=90))
    assert day_name("task_schedule", long_ago) in retired.dropped
    assert day_name("task_results", long_ago) in retired.dropped
    assert retired.kept_runs == 1
    assert await db.fetchval("SELECT count(*) FROM task_schedule WHERE id = $1", ended) == 0
    assert await _where(db, "task_schedule", "id", stuck) == "task_schedule_default"
    assert await _where(db, "task_results", "run_id", stuck) == "task_results_default"
    assert await db.fetchval("SELECT count(*) FROM task_results WHERE run_id = $1", ended) == 0
    names = {p.name for p in await partitions(db)}
    assert day_name("task_schedule", today) in names  # today's day is not touched


async def test_the_janitor_keeps_the_days_and_leaves_recent_ones(settings: Settings, pool: asyncpg.Pool) -> None:
    retired = await tend_days(pool, retention_days=90, days_ahead=20)
    assert retired.dropped == []
    async with pool.acquire() as conn:
        today = await _today(conn)
        names = {p.name for p in await partitions(conn)}
    assert {day_name(t, today + timedelta(days=20)) for t in ("task_schedule", "task_results", "run_audit")} <= names


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    name = f"tmtest_upgrade_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.pg_admin())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield services.dsn(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_an_installation_from_before_partitions_keeps_every_row_and_its_run_ids(empty_database: str) -> None:
    files = migration_files()
    before = next(i for i, (name, _) in enumerate(files) if name.startswith("0008"))
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL "
                           "DEFAULT now())")  # fmt: skip
        for name, sql in files[:before]:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
        task = await conn.fetchval(
            "INSERT INTO tasks (name, type, schedule_kind) VALUES ('t', 'noop', 'immediate') RETURNING id"
        )
        # Runs from two days ago to two days ahead, those past done with a result each.
        await conn.execute(
            "INSERT INTO task_schedule (task_id, scheduled_time) SELECT $1, now() + i * interval '1 hour' "
            "FROM generate_series(-48, 48) i",
            task,
        )
        await conn.execute("UPDATE task_schedule SET status = 'queued' WHERE scheduled_time < now()")
        await conn.execute("UPDATE task_schedule SET status = 'running', attempt = 1 WHERE status = 'queued'")
        await conn.execute(
            "UPDATE task_schedule SET status = 'succeeded', finished_at = now() WHERE status = 'running'"
        )
        await conn.execute(
            "INSERT INTO task_results (run_id, attempt, status, finished_at) "
            "SELECT id, 1, 'succeeded', now() FROM task_schedule WHERE status = 'succeeded'"
        )
        counts = [
            await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("task_schedule", "task_results", "run_audit")
        ]
        ids = [r[0] for r in await conn.fetch("SELECT id FROM task_schedule ORDER BY id")]
    finally:
        await conn.close()

    assert [name for name in await migrate(empty_database)] == [name for name, _ in files[before:]]

    conn = await asyncpg.connect(empty_database)
    try:
        after = [
            await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("task_schedule", "task_results", "run_audit")
        ]
        assert after == counts
        assert [r[0] for r in await conn.fetch("SELECT id FROM task_schedule ORDER BY id")] == ids
        today = (await conn.fetchval("SELECT now()")).astimezone(UTC).date()
        placed = {r[0] for r in await conn.fetch("SELECT DISTINCT tableoid::regclass::text FROM task_schedule")}
        assert "task_schedule_before" in placed and day_name("task_schedule", today) in placed
        assert "task_schedule_default" not in placed  # the days prepared took their runs out of it
        # New runs take ids after the old ones, and every result still finds its run.
        new_id = await conn.fetchval(
            "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() + interval '3 days') RETURNING id",
            task,
        )
        assert new_id > max(ids)
        orphans = await conn.fetchval(
            "SELECT count(*) FROM task_results r WHERE NOT EXISTS "
            "(SELECT 1 FROM task_schedule s WHERE s.id = r.run_id AND s.scheduled_time = r.scheduled_time)"
        )
        assert orphans == 0
    finally:
        await conn.close()
