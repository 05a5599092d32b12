"""A bug is not an outage, and neither is it retried for ever: a role started on a database it cannot work with
exits at once, naming `taskmill migrate` or the missing table, and a role whose database turns into one it cannot
work with (a table gone) stops with one line naming the error and a non-zero exit, for its supervisor. The
database going away and coming back is the other case (tests/faults/test_database_*.py): that is waited out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest

from taskmill.settings import Settings
from tests import services
from tests.helpers import free_port, run_message, start_role_process, taskmill

ROLES = ["scheduler", "distributor", "processor", "api", "capacity"]


def role_env(role: str) -> dict[str, str]:
    return {"JWT_SECRET": "s" * 32, "TASKMILL_API_PORT": str(free_port())} if role == "api" else {}


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    name = f"tmtest_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.pg_admin())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.parametrize("role", ROLES)
def test_a_role_on_a_database_never_migrated_exits_at_once_naming_taskmill_migrate(
    role: str, empty_database: str, settings: Settings
) -> None:
    result = taskmill(role, DATABASE_URL=services.dsn(empty_database), AMQP_URL=settings.amqp_url, **role_env(role))
    line = f"taskmill {role}: database {empty_database!r} was never migrated: run `taskmill migrate`"
    assert (result.returncode, result.stderr.splitlines()) == (2, [line]), result.stderr


@pytest.mark.parametrize("role", ROLES)
async def test_a_role_on_a_database_missing_a_migration_or_a_table_exits_at_once_naming_it(
    role: str, db: asyncpg.Connection, settings: Settings
) -> None:
    env = {"DATABASE_URL": settings.database_url, "AMQP_URL": settings.amqp_url, **role_env(role)}
    newest = await db.fetchval("SELECT max(name) FROM schema_migrations")
    await db.execute("DELETE FROM schema_migrations WHERE name = $1", newest)
    result = await asyncio.to_thread(taskmill, role, **env)
    database = await db.fetchval("SELECT current_database()")
    line = f"database {database!r} lacks 1 migration(s) this build needs ({newest}): run `taskmill migrate`"
    assert (result.returncode, result.stderr.splitlines()) == (2, [f"taskmill {role}: {line}"]), result.stderr

    await db.execute("INSERT INTO schema_migrations (name) VALUES ($1)", newest)
    await db.execute("DROP TABLE task_schedule CASCADE")
    result = await asyncio.to_thread(taskmill, role, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"taskmill {role}: database {database!r} lacks table(s) its migrations made (task_schedule): it was changed by "
        "hand; restore it, or point DATABASE_URL at another database and run `taskmill migrate`"
    ]


async def _publish_run_message(settings: Settings) -> None:
    """A well-formed message for run 1, as a distributor would publish it (the processor has to claim it)."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{settings.broker_prefix}.runs")
        await exchange.publish(aio_pika.Message(run_message(timeout_seconds=5).wire()), routing_key="noop")
    finally:
        await connection.close()


# role: the table renamed under it, and the statement that then fails first
BROKEN_AT_WORK = {
    "scheduler": ("tasks", 'relation "tasks" does not exist'),
    "distributor": ("task_schedule", 'relation "task_schedule" does not exist'),
    "processor": ("task_schedule", 'relation "task_schedule" does not exist'),
    "capacity": ("task_schedule", 'relation "task_schedule" does not exist'),
}


@pytest.mark.parametrize("role", sorted(BROKEN_AT_WORK))
async def test_a_role_whose_table_vanishes_while_it_works_stops_with_one_line_and_a_non_zero_exit(
    role: str, db: asyncpg.Connection, settings: Settings
) -> None:
    table, error = BROKEN_AT_WORK[role]
    proc = await start_role_process(
        settings, role, TASKMILL_SCHEDULER_INTERVAL_S="0.5", TASKMILL_CAPACITY_INTERVAL_S="0.5"
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not (seen and " ready" in seen[-1]):
                line = await proc.stderr.readline()
                assert line, f"{role} exited before it was ready: {seen}"
                seen.append(line.decode())
        await db.execute(f"ALTER TABLE {table} RENAME TO {table}_gone")
        if role == "processor":
            await _publish_run_message(settings)
        async with asyncio.timeout(30):  # never retried for ever: each role's next statement fails, and it stops
            _, rest = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = "".join(seen) + rest.decode()
    assert proc.returncode == 1, stderr
    assert stderr.splitlines()[-1] == f"taskmill {role}: PostgreSQL: {error}", stderr
    assert "Traceback" not in stderr
