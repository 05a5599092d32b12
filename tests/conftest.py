"""Test isolation: each test gets its own database (cloned from a migrated template) and its own broker prefix.

The PostgreSQL server and the RabbitMQ node are the suite's own unless given (tests/services.py).
"""

from __future__ import annotations

import asyncio
import atexit
import compileall
import fcntl
import hashlib
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from taskmill import topology
from taskmill.migrate import migrate, migration_files
from taskmill.settings import Settings
from tests import marks, services
from tests.processor.http_targets import Target, serving

# Every broker object of this pytest session starts with this, so two sessions at once never touch each other's.
PREFIX = f"tmtest.{uuid.uuid4().hex[:6]}"


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
        conn = await asyncpg.connect(services.pg_admin())
        await conn.execute("SELECT pg_advisory_lock_shared(hashtext($1))", name)
        ready.set()
        await asyncio.Event().wait()

    threading.Thread(target=asyncio.run, args=(hold(),), daemon=True, name="template-in-use").start()
    ready.wait(30)


async def _ensure_template() -> str:
    name = _template_name()
    try:
        admin = await services.wait_for_pg()
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=3)
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
    await migrate(services.dsn(building))
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


def pytest_configure(config: pytest.Config) -> None:
    """The process that begins the session starts the servers not given (before any xdist worker starts)."""
    for name, text in marks.MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if not hasattr(config, "workerinput"):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # A run stopped with SIGTERM (a CI timeout) unwinds as on Ctrl-C, through pytest_unconfigure.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        atexit.register(services.stop)  # should pytest_unconfigure not be reached
        services.start()
        _compile_sources()


# What the suite's role and CLI processes import of the project.
SOURCES = ("taskmill", "api", "capacity", "distributor", "processor", "scheduler", "bench")


def _compile_sources() -> None:
    """The project's modules compiled once, before the suite starts several hundred role and CLI processes: each
    would otherwise compile what it imports (0.2 s of CPU for a processor here) whenever nothing caches it, as under
    PYTHONDONTWRITEBYTECODE=1 (an editable install compiles nothing ahead, as a wheel's install does)."""
    root = Path(__file__).resolve().parent.parent
    for package in SOURCES:
        compileall.compile_dir(root / package, quiet=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    marks.apply(items)


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        services.stop()


@pytest.fixture(scope="session")
def template_db() -> str:
    return asyncio.run(_ensure_template())


@pytest.fixture(autouse=True)
def _alone_when_timed(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked `timing` runs while no other test of the session (any xdist worker) does: on two cores, the
    other workers' role processes would delay its roles by more than the bound it asserts. A readers-writer lock on
    files of the session's directory; a turnstile first, so that a timed test waiting is not starved by the others."""
    timed = request.node.get_closest_marker("timing") is not None
    # In the session's directory, which every worker of the run shares (tests/services.py).
    directory = Path(os.environ["TASKMILL_TEST_SERVICES"])
    with (directory / "timing.turnstile").open("a") as turnstile, (directory / "timing.lock").open("a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if not timed:
            fcntl.flock(turnstile, fcntl.LOCK_UN)  # let the next one in, a timed test's wait first
        fcntl.flock(lock, fcntl.LOCK_EX if timed else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if timed:
                fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.fixture(scope="session", autouse=True)
def _delete_test_queues() -> Iterator[None]:
    yield
    if services.broker_is_ours():
        return  # it goes with the session
    # Delay queues are created on demand; the per-test teardown cannot know them all.
    out = subprocess.run(
        services.rabbitmqctl("list_queues", "name", "--no-table-headers", "-q"), capture_output=True, text=True
    )
    names = [n.strip() for n in out.stdout.splitlines() if n.strip().startswith(PREFIX + ".")]

    async def delete() -> None:
        conn = await aio_pika.connect(services.amqp_url())
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
    if transport == "amqp":
        try:
            await services.wait_for_amqp()  # the session's own node may still be starting
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
    tag = uuid.uuid4().hex[:10]
    dbname = f"tmtest_{tag}"
    admin = await asyncpg.connect(services.pg_admin())
    try:
        await admin.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    s = Settings(
        database_url=services.dsn(dbname),
        amqp_url=services.amqp_url(),
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
        if transport == "amqp":  # over PostgreSQL the broker is neither used nor needed (nor, maybe, installed)
            await _delete_broker_objects(s)
        admin = await asyncpg.connect(services.pg_admin())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        finally:
            await admin.close()


async def _delete_broker_objects(s: Settings) -> None:
    conn = await aio_pika.connect(services.amqp_url())
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
