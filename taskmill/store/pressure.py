"""Queue pressure (SPEC D4): how many runs are due and not yet handed to the broker, and how long the oldest waited."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from taskmill.db import Connection

# Both from the partial index on due runs: cheap even on a large table. A paused one-off's run, held until it is
# resumed (lease_until 'infinity'), is not waiting to be handed out.
DUE_BACKLOG = """
SELECT count(*) AS runs, coalesce(extract(epoch FROM now() - min(scheduled_time)), 0)::float8 AS oldest_s
FROM task_schedule WHERE status = 'scheduled' AND scheduled_time <= now()
  AND (lease_until IS NULL OR lease_until < 'infinity')
"""


@dataclass(frozen=True, slots=True)
class Backlog:
    runs: int
    oldest_s: float  # 0 when nothing is due


async def due_backlog(conn: Connection | asyncpg.Pool) -> Backlog:
    row = await conn.fetchrow(DUE_BACKLOG)
    assert row is not None
    return Backlog(row["runs"], row["oldest_s"])
