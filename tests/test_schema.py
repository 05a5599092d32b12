"""taskmill/schema.sql is the schema the migrations make: both are applied to empty databases and dumped, and the
dumps must be the same (tables, columns and their order, constraints and their names, indexes, functions, triggers,
views), as must the legal transitions each inserts."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC
from importlib import resources

import asyncpg
import pytest

from taskmill.migrate import check_migrated, migrate, migration_files
from taskmill.store.partitions import prepare
from tests import services
from tests.tools import pg_dump


@pytest.fixture
async def empty_databases() -> AsyncIterator[tuple[str, str]]:
    names = [f"tmtest_schema_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    admin = await asyncpg.connect(services.pg_admin())
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        yield names[0], names[1]
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _server_major() -> int:
    admin = await asyncpg.connect(services.pg_admin())
    try:
        version: int = await admin.fetchval("SELECT current_setting('server_version_num')::int")
    finally:
        await admin.close()
    return version // 10000


async def _dump(dbname: str) -> str:
    """The schema as pg_dump prints it, without its comments and its per-run `\\restrict` key."""
    host = services.pg_admin().split("@", 1)[1].split("/", 1)[0]
    proc = await asyncio.create_subprocess_exec(
        str(pg_dump(await _server_major())),
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--exclude-table=schema_migrations",
        services.dsn(dbname),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"pg_dump of {dbname} on {host}: {err.decode()}"
    lines = out.decode().splitlines()
    kept = "\n".join(line for line in lines if line and not line.startswith(("--", "\\restrict", "\\unrestrict")))
    # PostgreSQL 18 names NOT NULL constraints, after the column they were made on: a column a migration renamed
    # keeps its first name there. Servers before 18 have no such names, so they are no part of the contract.
    return re.sub(r" CONSTRAINT \w+_not_null\d* NOT NULL", " NOT NULL", kept)


async def test_the_migrations_make_exactly_the_schema_in_schema_sql(empty_databases: tuple[str, str]) -> None:
    migrated, declared = empty_databases
    await migrate(services.dsn(migrated))
    conn = await asyncpg.connect(services.dsn(declared))
    try:
        await conn.execute((resources.files("taskmill") / "schema.sql").read_text())
        # The days the migration prepared, prepared the same way (on the same day).
        await prepare(conn, (await conn.fetchval("SELECT now()")).astimezone(UTC).date(), 14)
        declared_moves = await conn.fetch("SELECT * FROM run_transitions ORDER BY 1, 2")
    finally:
        await conn.close()
    conn = await asyncpg.connect(services.dsn(migrated))
    try:
        migrated_moves = await conn.fetch("SELECT * FROM run_transitions ORDER BY 1, 2")
        await check_migrated(conn)  # and a migrated database is one the roles accept
    finally:
        await conn.close()
    assert [tuple(r) for r in migrated_moves] == [tuple(r) for r in declared_moves]
    assert await _dump(migrated) == await _dump(declared)


def test_there_is_a_migration_file_for_every_number_in_order() -> None:
    names = [name for name, _ in migration_files()]
    assert [int(name[:4]) for name in names] == list(range(1, len(names) + 1))
