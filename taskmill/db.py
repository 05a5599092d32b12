"""PostgreSQL access: one pool per process, JSON codecs, and the database's own clock."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from taskmill.migrate import check_migrated

# A connection of one's own or one borrowed from a pool: the store functions take either.
Connection = asyncpg.Connection | PoolConnectionProxy

# What is worth trying again: the database went away or is coming back (a restart, a failover, a terminated
# backend, an unreachable host, a statement cut off by a timeout), had no connection slot free, or rolled back a
# transaction to settle a conflict (a serialization failure, a deadlock). The caller pauses and tries again; the
# pool reconnects. Anything else (a missing table or column, an SQL bug, a refused constraint) fails the same way
# every time: the role stops and names it, for its supervisor and its operator, instead of retrying for ever.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, a name that does not resolve
    TimeoutError,  # a connection attempt or a statement past command_timeout
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or is gone
    asyncpg.AdminShutdownError,  # 57P01: pg_terminate_backend, a fast shutdown
    asyncpg.CrashShutdownError,  # 57P02: another backend crashed, every session is reset
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.SerializationError,  # 40001
    asyncpg.DeadlockDetectedError,  # 40P01
    # A pooled connection whose backend was terminated can be handed out before asyncpg has seen the socket close,
    # and then fails with "cannot switch to state ..." (MagicStack/asyncpg#1069); the pool replaces it once the
    # close is seen. Its sibling OutdatedSchemaCacheError (a migration changed a type under a cached statement)
    # clears on the next try too.
    asyncpg.InternalClientError,
)


# What PostgreSQL settles by rolling one of two transactions back: the one rolled back may simply run again.
CONFLICTS: tuple[type[BaseException], ...] = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

T = TypeVar("T")


async def retry_conflicts(attempt: Callable[[], Awaitable[T]], tries: int = 4) -> T:
    """`attempt` (one whole transaction) run again, up to `tries` times in all, while PostgreSQL rolls it back to
    settle a conflict with another transaction (a deadlock, a serialization failure), after a short random pause.
    For a request that races the roles over the same runs: its client should not be told to try again for it."""
    for n in range(1, tries + 1):
        try:
            return await attempt()
        except CONFLICTS:
            if n == tries:
                raise
            await asyncio.sleep(random.uniform(0.01, 0.05) * n)
    raise AssertionError("unreachable")


def is_transient(exc: BaseException) -> bool:
    """Whether a database call that raised `exc` may succeed if tried again later (see TRANSIENT_ERRORS)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    # asyncpg says "connection is closed" or "the underlying connection is closed" with a bare InterfaceError;
    # its other InterfaceErrors ("another operation is in progress", a closed pool) are the program's own doing.
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


# The hot statements touch a few rows each by primary key. `random_page_cost` as for data in memory or on SSD
# keeps the batched `id = ANY($1)` statements on the index even on a large table fresh from a bulk insert (whose
# statistics lag); generic plans spare PostgreSQL planning the same few statements thousands of times a second.
# No JIT: a generic plan over a hundred daily partitions costs enough to cross its thresholds, and compiling it
# takes seconds where running it takes milliseconds.
SESSION = {"random_page_cost": "1.1", "plan_cache_mode": "force_generic_plan", "jit": "off"}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections never change session state (LISTEN and advisory locks use connections of their own),
    so a released connection needs no `RESET ALL` round trip; asyncpg still rolls back an open transaction."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=60,
        server_settings=SESSION,
    )
    assert pool is not None
    return pool


async def role_pool(dsn: str, *, max_size: int) -> asyncpg.Pool:
    """A role's pool, on a database migrated for this build (else NotMigrated, naming `taskmill migrate`)."""
    pool = await create_pool(dsn, max_size=max_size)
    try:
        await check_migrated(pool)
    except BaseException:
        await pool.close()
        raise
    return pool


async def answers(pool: asyncpg.Pool, timeout: float = 2.0) -> bool:
    """Whether the database answers a trivial query within `timeout` seconds (a health probe: whatever the reason
    it does not, it does not)."""
    try:
        return bool(await pool.fetchval("SELECT true", timeout=timeout))
    except Exception:
        return False


async def connect(dsn: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def db_now(conn: Connection | asyncpg.Pool) -> datetime:
    """The database's clock (`now()`: the start of the transaction), which every due check and lease uses."""
    now: datetime = await conn.fetchval("SELECT now()")
    return now


def jsonb(value: Any) -> str:
    """A value for a `$n::text::jsonb` parameter in a batched statement."""
    return json.dumps(value, separators=(",", ":"))
