"""Applies the numbered SQL files in migrations/ in order, each once, each in its own transaction."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from taskmill.settings import ConfigError
from taskmill.store.partitions import prepare

log = logging.getLogger(__name__)

# Any fixed number: every `taskmill migrate` started at once waits for the first to finish.
_LOCK_KEY = 0x7A5C_3111


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("taskmill") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text()) for name in names]


async def create_database_if_missing(dsn: str) -> bool:
    """Creates the database `dsn` names, connecting to the `postgres` database to do it."""
    parts = urlsplit(dsn)
    dbname = parts.path.lstrip("/")
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{dbname}"')
    except asyncpg.DuplicateDatabaseError:
        return False
    finally:
        await admin.close()
    return True


async def migrate(dsn: str, days_ahead: int = 14) -> list[str]:
    """Brings the database up to date; returns the names of the migrations it applied."""
    if await create_database_if_missing(dsn):
        log.info("created database", extra={"action": "create_database"})
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
            log.info("applied migration %s", name, extra={"action": "migrate"})
        # The days of the partitioned tables, from today on (the scheduler's janitor keeps preparing them).
        now: datetime = await conn.fetchval("SELECT now()")
        await prepare(conn, now.astimezone(UTC).date(), days_ahead)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        await conn.close()
    return applied


def schema_tables() -> list[str]:
    """The tables of the current schema (taskmill/schema.sql)."""
    text = (resources.files("taskmill") / "schema.sql").read_text()
    return re.findall(r"^CREATE TABLE (\w+) \(", text, flags=re.MULTILINE)  # not the partitions


class NotMigrated(ConfigError):
    """The database lacks migrations this build ships: a role started on it would fail at its first statement."""


async def check_migrated(conn: asyncpg.Connection | asyncpg.Pool) -> None:
    """Raises NotMigrated, naming what to do, unless every migration this build ships is applied and every table
    of the schema is there. A migration applied by a newer build is only logged: migrations add, so this build
    still finds what it uses."""
    database = await conn.fetchval("SELECT current_database()")
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        raise NotMigrated(f"database {database!r} was never migrated: run `taskmill migrate`")
    applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    shipped = [name for name, _ in migration_files()]
    if missing := [name for name in shipped if name not in applied]:
        raise NotMigrated(
            f"database {database!r} lacks {len(missing)} migration(s) this build needs ({', '.join(missing)}): "
            "run `taskmill migrate`"
        )
    gone = await conn.fetchval(
        "SELECT coalesce(array_agg(t ORDER BY t), '{}') FROM unnest($1::text[]) t WHERE to_regclass(t) IS NULL",
        schema_tables(),
    )
    if gone:
        raise NotMigrated(
            f"database {database!r} lacks table(s) its migrations made ({', '.join(gone)}): it was changed by "
            "hand; restore it, or point DATABASE_URL at another database and run `taskmill migrate`"
        )
    if newer := sorted(applied - set(shipped)):
        log.warning("database %r has migrations newer than this build: %s", database, ", ".join(newer))
