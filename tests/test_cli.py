from __future__ import annotations

import uuid

import asyncpg
import pytest

from taskmill.migrate import migrate, migration_files
from tests import services
from tests.helpers import taskmill


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TASKMILL_CONCURRENCY", "lots"), ("DATABASE_URL", "mysql://db/x"), ("TASKMILL_QUEUE_TYPE", "stream")],
)
def test_a_bad_setting_stops_the_process_with_one_line_naming_it(variable: str, value: str) -> None:
    result = taskmill("processor", **{variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"taskmill: bad setting: {variable}: ")
    assert "Traceback" not in result.stderr


def test_an_unknown_command_is_refused_with_usage() -> None:
    result = taskmill("schedulr")
    assert result.returncode == 2
    assert "invalid choice: 'schedulr'" in result.stderr


async def test_migrate_creates_the_database_and_is_idempotent() -> None:
    name = f"tmtest_migrate_{uuid.uuid4().hex[:8]}"
    try:
        files = [file for file, _ in migration_files()]
        # Numbered from 0001 without a gap, applied in that order.
        assert [int(file[:4]) for file in files] == list(range(1, len(files) + 1))
        assert files[:2] == ["0001_schema.sql", "0002_task_secrets.sql"]
        assert await migrate(services.dsn(name)) == files
        assert await migrate(services.dsn(name)) == []
        conn = await asyncpg.connect(services.dsn(name))
        try:
            tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        finally:
            await conn.close()
        assert {"tasks", "task_schedule", "task_results", "run_audit", "schema_migrations"} <= tables
    finally:
        admin = await asyncpg.connect(services.pg_admin())
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
