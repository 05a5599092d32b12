"""The PostgreSQL transport's queue (`run_queue`, 0009_run_queue.sql): every statement on it, a batch each.

A delivery is named by the message's id and its delivery count: a settlement from a processor whose lease ran out
(the message was handed to another one since) matches nothing, as a broker ignores an ack on a closed channel.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import asyncpg

from taskmill.db import Connection

Conn = Connection | asyncpg.Pool

WORK, DEAD = "work", "dead"
# NOTIFY channel: work was added (processors waiting claim what is ready, and sleep until the next one is).
CHANNEL = "taskmill_queue"


@dataclass(frozen=True, slots=True)
class Message:
    """A message to enqueue: ready `delay_s` from now; to the dead letters when `reason` is set."""

    type: str
    body: bytes
    run_id: int | None
    delay_s: float = 0.0
    reason: str | None = None
    priority: int = 0  # 0-9: the claim hands out the most urgent ready message first


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed to this processor, until it settles it or its lease runs out."""

    id: int
    delivery: int  # how many times it has been handed out, this time included
    type: str
    body: bytes
    priority: int = 0


ENQUEUE = """
WITH added AS (
    INSERT INTO run_queue (queue, type, body, run_id, available_at, reason, priority)
    SELECT CASE WHEN m.reason IS NULL THEN 'work' ELSE 'dead' END, m.type, m.body, m.run_id,
           now() + make_interval(secs => m.delay_s), m.reason, m.priority
    FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::float8[], $5::text[], $6::smallint[])
        AS m(type, body, run_id, delay_s, reason, priority)
    RETURNING queue, available_at
)
-- CASE: the only order of evaluation SQL promises (a dead letter must not wake anyone).
SELECT count(*)::int FROM added
WHERE CASE WHEN queue = 'work' THEN pg_notify('taskmill_queue', '') IS NOT NULL END
"""


async def enqueue(conn: Conn, messages: Sequence[Message]) -> None:
    """Adds the messages in one statement: all of them or none (a broker's confirms). Processors waiting for work
    hear of it at commit, a retry's too: one asleep until the next message it knew of must wake at this one's time
    if it comes sooner."""
    if messages:
        await conn.execute(
            ENQUEUE,
            [m.type for m in messages],
            [m.body for m in messages],
            [m.run_id for m in messages],
            [m.delay_s for m in messages],
            [m.reason for m in messages],
            [m.priority for m in messages],
        )


# The most urgent ready messages, the oldest first among equals, leased to the processor: `available_at` moves to
# the lease's end, so the message is handed out again then unless the processor settles or renews it first. `$4`
# empty: every type but `$5`. `{lane}`: a condition on the priority, spelled out so the index scan starts where the
# lane does (a parameter would leave it a filter, walked over a backlog of the other lane).
_CLAIM = """
WITH picked AS (
    SELECT id FROM run_queue
    WHERE queue = 'work' AND available_at <= now() AND (cardinality($4::text[]) = 0 OR type = ANY($4::text[]))
      AND type <> ALL($5::text[]) {lane}
    ORDER BY priority DESC, available_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE run_queue q
SET available_at = now() + make_interval(secs => $3), leased_by = $2, deliveries = q.deliveries + 1
FROM picked WHERE q.id = picked.id
RETURNING q.id, q.deliveries, q.type, q.body, q.priority
"""
# A processor takes messages in two lanes, as from RabbitMQ's work queue and its urgent lane: each holds up to its
# concurrency, so an urgent message is taken while the normal lane is full of a backlog's messages.
CLAIM = {
    None: _CLAIM.format(lane=""),
    False: _CLAIM.format(lane="AND priority = 0"),
    True: _CLAIM.format(lane="AND priority > 0"),
}


async def claim(
    conn: Conn,
    limit: int,
    worker: str,
    lease_s: float,
    types: Sequence[str] = (),
    excluded: Sequence[str] = (),
    urgent: bool | None = None,
) -> list[Delivery]:
    """Up to `limit` ready messages (of `types`, or any but `excluded`; of priority 1-9 when `urgent`, 0 when not
    urgent, any when None), the most urgent first, then the oldest, leased for `lease_s`; returned in that order."""
    rows = await conn.fetch(CLAIM[urgent], limit, worker, lease_s, list(types), list(excluded))
    found = (Delivery(r["id"], r["deliveries"], r["type"], r["body"], r["priority"]) for r in rows)
    return sorted(found, key=lambda d: (-d.priority, d.id))


_DELIVERIES = "unnest($1::bigint[], $2::int[]) AS d(id, n) WHERE q.id = d.id AND q.deliveries = d.n"

ACK = f"DELETE FROM run_queue q USING {_DELIVERIES}"

RENEW = f"""
UPDATE run_queue q SET available_at = now() + make_interval(secs => $3) FROM {_DELIVERIES} AND q.queue = 'work'
"""

REQUEUE = f"""
WITH back AS (
    UPDATE run_queue q SET available_at = now(), leased_by = NULL FROM {_DELIVERIES} AND q.queue = 'work'
    RETURNING q.id
)
SELECT count(*)::int FROM back WHERE pg_notify('taskmill_queue', '') IS NOT NULL
"""

REJECT = f"UPDATE run_queue q SET queue = 'dead', reason = $3, leased_by = NULL FROM {_DELIVERIES}"


def _keys(deliveries: Sequence[Delivery]) -> tuple[list[int], list[int]]:
    return [d.id for d in deliveries], [d.delivery for d in deliveries]


async def ack(conn: Conn, deliveries: Sequence[Delivery]) -> None:
    if deliveries:
        await conn.execute(ACK, *_keys(deliveries))


async def renew(conn: Conn, deliveries: Sequence[Delivery], lease_s: float) -> None:
    if deliveries:
        await conn.execute(RENEW, *_keys(deliveries), lease_s)


async def requeue(conn: Conn, deliveries: Sequence[Delivery]) -> None:
    """Back to the queue, ready at once (a processor stopping hands back what it has not started)."""
    if deliveries:
        await conn.execute(REQUEUE, *_keys(deliveries))


async def reject(conn: Conn, deliveries: Sequence[Delivery], reason: str) -> None:
    """To the dead letters as they came, with the reason."""
    if deliveries:
        await conn.execute(REJECT, *_keys(deliveries), reason[:1000])


READY = "SELECT count(*)::int FROM run_queue WHERE queue = 'work' AND available_at <= now()"

# Ready messages per lane, and the dead letters, named as the RabbitMQ queues they stand for.
DEPTHS = """
SELECT CASE WHEN queue = 'dead' THEN 'dead' WHEN priority > 0 THEN 'work.urgent' ELSE 'work' END AS name,
       count(*)::int AS n
FROM run_queue WHERE queue = 'dead' OR available_at <= now() GROUP BY 1
"""


async def ready(conn: Conn) -> int:
    """Messages ready to be handed out now."""
    count: int = await conn.fetchval(READY)
    return count


async def depths(conn: Conn) -> dict[str, int]:
    """Ready messages in each lane and the dead letters: {"work": n, "work.urgent": n, "dead": n}."""
    found = {r["name"]: r["n"] for r in await conn.fetch(DEPTHS)}
    return {name: found.get(name, 0) for name in ("work", "work.urgent", "dead")}


# The earliest of each priority's first message (of the types a claim with the same `$1`, `$2` takes, of the
# priorities from `$3` to `$4`): up to ten short walks of the claim's index, not a walk of all of it.
NEXT_READY_IN = """
SELECT extract(epoch FROM min(first.available_at) - now())::float8
FROM generate_series($3::int, $4::int) AS p(priority),
LATERAL (SELECT available_at FROM run_queue q
         WHERE q.queue = 'work' AND q.priority = p.priority
           AND (cardinality($1::text[]) = 0 OR q.type = ANY($1::text[])) AND q.type <> ALL($2::text[])
         ORDER BY q.available_at LIMIT 1) AS first
"""


async def next_ready_in(
    conn: Conn, types: Sequence[str] = (), excluded: Sequence[str] = (), lanes: Collection[bool] = (False, True)
) -> float | None:
    """Seconds until the next message (of `types`, or any but `excluded`, in `lanes`: urgent True, as `claim` takes
    them) is ready (a retry waiting out its delay, a lease running out); None when there is none. A message the
    caller does not take, of another type or in a lane it has no room in, must not count: it would wake the caller
    over and over, to claim nothing."""
    lowest, highest = (0 if False in lanes else 1), (9 if True in lanes else 0)
    if lowest > highest:
        return None
    value: float | None = await conn.fetchval(NEXT_READY_IN, list(types), list(excluded), lowest, highest)
    return value


# What a processor of the PostgreSQL transport does not hold: ready messages, retries waiting out their delay, and
# messages whose lease ran out (their processor died). Locked until the transaction that takes them ends.
LEFTOVERS = """
SELECT id, type, body, run_id, greatest(0, extract(epoch FROM available_at - now()))::float8 AS delay_s, priority
FROM run_queue
WHERE queue = 'work' AND (leased_by IS NULL OR available_at <= now())
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True, slots=True)
class Leftover:
    id: int
    type: str
    body: bytes
    run_id: int
    delay_s: float
    priority: int


async def leftovers(conn: Connection, limit: int) -> list[Leftover]:
    """Up to `limit` messages no processor holds, locked for the caller's transaction."""
    rows = await conn.fetch(LEFTOVERS, limit)
    return [Leftover(r["id"], r["type"], r["body"], r["run_id"] or 0, r["delay_s"], r["priority"]) for r in rows]


async def delete(conn: Connection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute("DELETE FROM run_queue WHERE id = ANY($1::bigint[])", list(ids))
