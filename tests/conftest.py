"""Test isolation: each test gets its own database (cloned from a migrated template) and its own broker prefix.

PostgreSQL and RabbitMQ must be running; a missing service fails the run with a clear message.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aio_pika
import asyncpg
import pytest

from taskmill import topology
from taskmill.migrate import migrate, migration_files
from taskmill.settings import Settings
from tests.processor.http_targets import Target, serving
from tests.tools import missing_tools

PG_ADMIN = os.environ.get("TASKMILL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("TASKMILL_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
# Every broker object of this pytest session starts with this, so two sessions at once never touch each other's.
PREFIX = f"tmtest.{uuid.uuid4().hex[:6]}"


def _dsn(dbname: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname


def _template_name() -> str:
    digest = hashlib.sha1("".join(sql for _, sql in migration_files()).encode()).hexdigest()[:10]
    return f"taskmill_template_{digest}"


# Every pytest process (xdist workers, or two sessions at once) takes this lock before looking for the template,
# so one builds it and the others wait, then find it.
_TEMPLATE_LOCK = 0x7A5C_7E57


# While a pytest process uses a template it holds a shared advisory lock on the template's name (its own
# connection, for the whole session): a session of other migrations (another checkout) drops only the templates
# no one holds.
def _hold_in_use(name: str) -> None:
    """Takes the shared lock on a connection of a daemon thread's own loop, kept until the process exits."""
    ready = threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        await conn.execute("SELECT pg_advisory_lock_shared(hashtext($1))", name)
        ready.set()
        await asyncio.Event().wait()

    threading.Thread(target=asyncio.run, args=(hold(),), daemon=True, name="template-in-use").start()
    ready.wait(30)


async def _ensure_template() -> str:
    name = _template_name()
    try:
        admin = await asyncpg.connect(PG_ADMIN)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.exit(f"PostgreSQL is not reachable at {PG_ADMIN}: {exc}", returncode=3)
    try:
        await admin.execute("SELECT pg_advisory_lock($1)", _TEMPLATE_LOCK)
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await _build_template(admin, name)
        _hold_in_use(name)
    finally:
        await admin.close()  # the build lock goes with the session
    return name


async def _build_template(admin: asyncpg.Connection, name: str) -> None:
    """Migrates a database under a name of its own, then renames it: a run killed halfway leaves a `_build_`
    leftover (dropped by the next build), never a half-migrated template."""
    building = f"{name}_build_{os.getpid()}"
    await migrate(_dsn(building))
    await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
    await admin.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true')
    # Templates of earlier migrations, and builds that never finished, are of no more use.
    for old in await admin.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE 'taskmill\\_template\\_%' AND datname <> $1", name
    ):
        if not await admin.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", old[0]):
            continue  # a session of another checkout is using it
        await admin.execute(f'ALTER DATABASE "{old[0]}" WITH IS_TEMPLATE false')
        await admin.execute(f'DROP DATABASE IF EXISTS "{old[0]}" WITH (FORCE)')
        await admin.execute("SELECT pg_advisory_unlock(hashtext($1))", old[0])


async def _check_broker() -> None:
    try:
        conn = await aio_pika.connect(AMQP, timeout=5)
    except Exception as exc:
        pytest.exit(f"RabbitMQ is not reachable at {AMQP}: {exc}", returncode=3)
    await conn.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stops the run at once when a program the tests drive is missing (in the controller, before any worker)."""
    if not hasattr(session.config, "workerinput") and (problem := missing_tools()):
        pytest.exit(problem, returncode=3)


@pytest.fixture(scope="session")
def template_db() -> str:
    async def prepare() -> str:
        await _check_broker()
        return await _ensure_template()

    return asyncio.run(prepare())


@pytest.fixture(scope="session", autouse=True)
def _delete_test_queues() -> Iterator[None]:
    yield
    # Delay queues are created on demand; the per-test teardown cannot know them all.
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "name", "--no-table-headers", "-q"], capture_output=True, text=True
    )
    names = [n.strip() for n in out.stdout.splitlines() if n.strip().startswith(PREFIX + ".")]

    async def delete() -> None:
        conn = await aio_pika.connect(AMQP)
        channel = await conn.channel()
        for name in names:
            await channel.queue_delete(name)
        await conn.close()

    if names:
        asyncio.run(delete())


@pytest.fixture
def transport() -> str:
    """The transport a test's settings use: RabbitMQ, unless the test parametrizes `transport` (tests/transports.py
    has `BOTH`)."""
    return "amqp"


@pytest.fixture
async def settings(template_db: str, transport: str) -> AsyncIterator[Settings]:
    async with isolated_settings(template_db, transport) as s:
        yield s


@asynccontextmanager
async def isolated_settings(template_db: str, transport: str = "amqp") -> AsyncIterator[Settings]:
    """A database of its own and a broker prefix of its own, removed afterwards (also for module-scoped fixtures)."""
    tag = uuid.uuid4().hex[:10]
    dbname = f"tmtest_{tag}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    s = Settings(
        database_url=_dsn(dbname),
        amqp_url=AMQP,
        transport=transport,
        broker_prefix=f"{PREFIX}.{tag}",
        queue_lease_s=3,
        log_format="text",
        queued_lease_s=5,
        running_grace_s=1,
        rescue_interval_s=0.5,
        scheduler_interval_s=1,
        max_idle_s=2,
        publish_timeout_s=5,
        # Commands run as the test runs them, unconfined, so they can write where the tests look (tmp_path); the
        # isolation itself is tested on its own, against these defaults' opposite (tests/processor/test_jail.py).
        command_isolation="none",
        command_user="root" if os.geteuid() == 0 else "",
    )
    try:
        yield s
    finally:
        await _delete_broker_objects(s)
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        finally:
            await admin.close()


async def _delete_broker_objects(s: Settings) -> None:
    conn = await aio_pika.connect(AMQP)
    try:
        await topology.delete(await conn.channel(), topology.Names(s.broker_prefix))
    finally:
        await conn.close()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    from taskmill.db import connect

    conn = await connect(settings.database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the test's database, for code that takes one (the forecast, the janitor)."""
    from taskmill.db import create_pool

    p = await create_pool(settings.database_url, max_size=2)
    yield p
    await p.close()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """The test's own HTTP server for http tasks (tests/processor/http_targets.py)."""
    async with serving() as t:
        yield t
