"""The janitor's statements: purging what is older than the retention, one batch per statement.

Each statement picks its batch with `FOR UPDATE SKIP LOCKED`, so any number of janitors share the work without
waiting on each other or deleting a row twice, and each batch is its own short transaction: no long locks, and
autovacuum reclaims the space as it goes instead of after one giant delete. The cutoff is the database's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskmill.db import Connection

# Terminal runs that ended before the cutoff go with their audit rows in the same statement; their results go by
# the foreign key's ON DELETE CASCADE. A run that is not terminal stays, whatever its age.
# The status list and the coalesce match the partial index task_schedule_ended (0004_retention.sql).
PURGE_RUNS = """
WITH doomed AS (
    SELECT id FROM task_schedule
    WHERE status IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped')
      AND coalesce(finished_at, scheduled_time) < now() - make_interval(days => $1)
    ORDER BY coalesce(finished_at, scheduled_time)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), runs AS (
    DELETE FROM task_schedule s USING doomed WHERE s.id = doomed.id RETURNING s.id
), audit AS (
    DELETE FROM run_audit a USING runs WHERE a.run_id = runs.id RETURNING 1
)
SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM audit) AS audit
"""

# What is left: old attempts of runs still in flight (a retry far in the future) keep their run, not their result.
PURGE_RESULTS = """
WITH doomed AS (
    SELECT run_id, attempt FROM task_results
    WHERE finished_at < now() - make_interval(days => $1)
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM task_results r USING doomed WHERE r.run_id = doomed.run_id AND r.attempt = doomed.attempt
"""

# Audit rows have no key: a batch is named by ctid, stable while the row lock is held.
PURGE_AUDIT = """
WITH doomed AS (
    SELECT ctid FROM run_audit
    WHERE at < now() - make_interval(days => $1)
    ORDER BY at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM run_audit WHERE ctid = ANY (ARRAY(SELECT ctid FROM doomed))
"""


@dataclass(frozen=True, slots=True)
class Purged:
    """Rows one batch deleted."""

    runs: int = 0
    results: int = 0
    audit: int = 0


async def purge_runs(conn: Connection, days: int, batch: int) -> Purged:
    """One batch of terminal runs ended more than `days` ago, with their audit rows (their results cascade)."""
    row = await conn.fetchrow(PURGE_RUNS, days, batch)
    assert row is not None
    return Purged(runs=row["runs"], audit=row["audit"])


async def purge_results(conn: Connection, days: int, batch: int) -> Purged:
    status: str = await conn.execute(PURGE_RESULTS, days, batch)
    return Purged(results=int(status.rsplit(" ", 1)[1]))


async def purge_audit(conn: Connection, days: int, batch: int) -> Purged:
    status: str = await conn.execute(PURGE_AUDIT, days, batch)
    return Purged(audit=int(status.rsplit(" ", 1)[1]))
