"""PostgreSQL access: one pool per process, JSON codecs, and the database's own clock."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of one's own or one borrowed from a pool: the store functions take either.
Connection = asyncpg.Connection | PoolConnectionProxy

# What a statement raises when the database went away (restarted, connection terminated, unreachable): the
# caller tries again later, the pool reconnects. InternalClientError too: a pooled connection whose backend was
# terminated can be handed out before asyncpg has seen the socket close, and then fails with "cannot switch to
# state ..." (MagicStack/asyncpg#1069); the pool replaces it once the close is seen.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


# The hot statements touch a few rows each by primary key. `random_page_cost` as for data in memory or on SSD
# keeps the batched `id = ANY($1)` statements on the index even on a large table fresh from a bulk insert (whose
# statistics lag); generic plans spare PostgreSQL planning the same few statements thousands of times a second.
_SESSION = {"random_page_cost": "1.1", "plan_cache_mode": "force_generic_plan"}


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
        server_settings=_SESSION,
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


def jsonb(value: Any) -> str:
    """A value for a `$n::text::jsonb` parameter in a batched statement."""
    return json.dumps(value, separators=(",", ":"))
