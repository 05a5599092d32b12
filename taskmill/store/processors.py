"""The processors at work (the `processors` table): registered at start, seen every heartbeat, gone at stop."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from taskmill.db import Connection

REGISTER = """
INSERT INTO processors (worker, command_isolation) VALUES ($1, $2)
ON CONFLICT (worker) DO UPDATE SET started_at = now(), seen_at = now(), command_isolation = $2
"""
SEEN = "UPDATE processors SET seen_at = now() WHERE worker = $1"
LEAVE = "DELETE FROM processors WHERE worker = $1"
# Those seen within `$1` seconds; the others died without leaving (their rows go after a day).
RECENT = """
SELECT worker, started_at, seen_at, command_isolation FROM processors
WHERE seen_at > now() - make_interval(secs => $1) ORDER BY worker
"""
FORGET = "DELETE FROM processors WHERE seen_at < now() - interval '1 day'"


@dataclass(frozen=True, slots=True)
class Processor:
    worker: str
    started_at: datetime
    seen_at: datetime
    command_isolation: str


async def register(conn: Connection | asyncpg.Pool, worker: str, command_isolation: str) -> None:
    await conn.execute(REGISTER, worker, command_isolation)
    await conn.execute(FORGET)


async def seen(conn: Connection | asyncpg.Pool, worker: str) -> None:
    await conn.execute(SEEN, worker)


async def leave(conn: Connection | asyncpg.Pool, worker: str) -> None:
    await conn.execute(LEAVE, worker)


async def recent(conn: Connection | asyncpg.Pool, within_s: float) -> list[Processor]:
    return [Processor(**dict(r)) for r in await conn.fetch(RECENT, within_s)]


LIVE_COUNT = "SELECT count(*)::int FROM processors WHERE seen_at > now() - make_interval(secs => $1)"


async def live_count(conn: Connection | asyncpg.Pool, within_s: float) -> int:
    """Processors seen within `within_s` seconds."""
    count: int = await conn.fetchval(LIVE_COUNT, within_s)
    return count
