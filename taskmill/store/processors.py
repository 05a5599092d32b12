"""The processors at work (the `processors` table): registered at start, seen every heartbeat, gone at stop.

A processor dedicated to types (`--types`) leaves its row behind when it stops, marked as not seen lately: the set
of types it named is what names its queue over RabbitMQ, and the distributor still drains that queue after the last
such processor left (distributor/reroute.py). Such rows go after a day, as do those of processors that died."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from taskmill.db import Connection

REGISTER = """
INSERT INTO processors (worker, command_isolation, handlers, types) VALUES ($1, $2, $3, $4)
ON CONFLICT (worker) DO UPDATE SET started_at = now(), seen_at = now(), command_isolation = $2, handlers = $3,
    types = $4
"""
SEEN = "UPDATE processors SET seen_at = now() WHERE worker = $1"
# A dedicated processor's row stays, seen `$2` seconds ago: no longer live for anyone who asks.
LEAVE = """
WITH general AS (DELETE FROM processors WHERE worker = $1 AND types IS NULL)
UPDATE processors SET seen_at = now() - make_interval(secs => $2) WHERE worker = $1 AND types IS NOT NULL
"""
# Those seen within `$1` seconds; the others died without leaving (their rows go after a day).
RECENT = """
SELECT worker, started_at, seen_at, command_isolation, handlers, types FROM processors
WHERE seen_at > now() - make_interval(secs => $1) ORDER BY worker
"""
FORGET = "DELETE FROM processors WHERE seen_at < now() - interval '1 day'"

# A processor says it is alive every 10 s (processor/service.py HEARTBEAT_S): one not seen for three of those is
# gone, for /health, the count of consumers and the routing of dedicated types alike.
LIVE_WITHIN_S = 30.0


@dataclass(frozen=True, slots=True)
class Processor:
    worker: str
    started_at: datetime
    seen_at: datetime
    command_isolation: str
    handlers: list[str]  # the Python handlers it serves
    types: list[str] | None  # the types it is dedicated to (`--types`); None: every type


async def register(
    conn: Connection | asyncpg.Pool,
    worker: str,
    command_isolation: str,
    handlers: Sequence[str] = (),
    types: Sequence[str] | None = None,
) -> None:
    """`types`: the types it is dedicated to (`--types`), None when it serves every type."""
    await conn.execute(REGISTER, worker, command_isolation, list(handlers), None if types is None else list(types))
    await conn.execute(FORGET)


async def seen(conn: Connection | asyncpg.Pool, worker: str) -> None:
    await conn.execute(SEEN, worker)


async def leave(conn: Connection | asyncpg.Pool, worker: str) -> None:
    await conn.execute(LEAVE, worker, LIVE_WITHIN_S)


async def recent(conn: Connection | asyncpg.Pool, within_s: float) -> list[Processor]:
    return [Processor(**dict(r)) for r in await conn.fetch(RECENT, within_s)]


LIVE_COUNT = "SELECT count(*)::int FROM processors WHERE seen_at > now() - make_interval(secs => $1)"


async def live_count(conn: Connection | asyncpg.Pool, within_s: float) -> int:
    """Processors seen within `within_s` seconds."""
    count: int = await conn.fetchval(LIVE_COUNT, within_s)
    return count


# The types with due runs that no processor seen within `$1` seconds serves: one without `--types` serves every
# built-in type (`$2`) and its handlers, a dedicated one its types. Runs are counted only for those types (the small
# tables first), and at most `$3` of each: /health is asked often, and must stay cheap under any backlog.
UNSERVED = """
WITH live AS (
    SELECT handlers, types FROM processors WHERE seen_at > now() - make_interval(secs => $1)
), served AS (
    SELECT unnest(coalesce(types, $2::text[] || handlers)) AS type FROM live
), unserved AS (
    SELECT type FROM (SELECT unnest($2::text[]) AS type UNION SELECT name FROM task_types) AS known
    EXCEPT SELECT type FROM served
)
SELECT u.type,
       (SELECT count(*) FROM (
            SELECT 1 FROM tasks t JOIN task_schedule s ON s.task_id = t.id
            WHERE t.type = u.type AND s.status IN ('scheduled', 'queued', 'retrying') AND s.scheduled_time <= now()
            LIMIT $3) AS due) AS waiting
FROM unserved u ORDER BY u.type
"""

# At most this many due runs of a type are counted (`due_runs` then reads "at least").
UNSERVED_COUNT_CAP = 10_000


async def unserved(conn: Connection | asyncpg.Pool, within_s: float, builtin: Sequence[str]) -> list[tuple[str, int]]:
    """(type, due runs waiting, capped) for each type with due runs that no live processor serves."""
    rows = await conn.fetch(UNSERVED, within_s, list(builtin), UNSERVED_COUNT_CAP)
    return [(r["type"], r["waiting"]) for r in rows if r["waiting"]]


DEDICATED = """
SELECT worker, types FROM processors WHERE types IS NOT NULL AND seen_at > now() - make_interval(secs => $1)
"""


async def dedicated(conn: Connection | asyncpg.Pool, within_s: float) -> dict[str, list[str]]:
    """The types each live dedicated processor serves, by worker."""
    return {r["worker"]: list(r["types"]) for r in await conn.fetch(DEDICATED, within_s)}


FLEET = """
SELECT types, bool_or(seen_at > now() - make_interval(secs => $1)) AS live FROM processors GROUP BY types
"""


async def fleet(conn: Connection | asyncpg.Pool, within_s: float) -> dict[tuple[str, ...] | None, bool]:
    """Every set of types (sorted) a dedicated processor of the last day served, live or gone (each names a queue
    over RabbitMQ), and None for the processors that serve every type: whether one of them was seen within
    `within_s` seconds."""
    found: dict[tuple[str, ...] | None, bool] = {}
    for r in await conn.fetch(FLEET, within_s):
        types = None if r["types"] is None else tuple(sorted(r["types"]))
        found[types] = found.get(types, False) or r["live"]
    return found


# Over PostgreSQL a dedicated processor holds this advisory lock (shared, keyed by its name) on the connection it
# listens for work on, for as long as it takes work (processor/pg_intake.py). Its row says it is live for up to
# LIVE_WITHIN_S after it was killed; the lock goes with its connection at once.
PRESENCE_LOCK = 0x746D_7072
HOLD_PRESENCE = "SELECT pg_advisory_lock_shared($1::int, hashtext($2))"
# Of workers `$2`, those holding their presence lock (pg_locks shows the two int4 keys as oids, the pair as 2).
PRESENT = """
SELECT w.worker FROM unnest($2::text[]) AS w(worker)
WHERE EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = $1::int::oid AND l.objid = hashtext(w.worker)::oid
)
"""


async def hold_presence(conn: asyncpg.Connection, worker: str) -> None:
    """Takes `worker`'s presence lock on `conn`, for the session: a dedicated processor of the PostgreSQL transport
    takes work while it holds it."""
    await conn.execute(HOLD_PRESENCE, PRESENCE_LOCK, worker)


async def present(conn: Connection | asyncpg.Pool, found: dict[str, list[str]]) -> dict[str, list[str]]:
    """Of `found` (dedicated processors by worker), those holding their presence lock now."""
    holding = {r["worker"] for r in await conn.fetch(PRESENT, PRESENCE_LOCK, list(found))}
    return {worker: types for worker, types in found.items() if worker in holding}
