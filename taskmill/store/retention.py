"""The janitor's row-by-row purge, for what the dropping of whole days (taskmill/store/partitions.py) leaves: the
rows of the DEFAULT partitions (runs scheduled beyond the prepared days, runs of a retired day that were not over,
rows written while a day was missing), one batch per statement.

Each statement picks its batch with `FOR UPDATE SKIP LOCKED`, so any number of janitors share the work without
waiting on each other or deleting a row twice, and each batch is its own short transaction. The cutoff is the
database's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskmill.db import Connection

# Terminal runs that ended before the cutoff go with their results and audit rows in the same statement. A run that
# is not terminal stays, whatever its age.
PURGE_RUNS = """
WITH doomed AS (
    SELECT id, scheduled_time FROM task_schedule_default
    WHERE status IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped')
      AND coalesce(finished_at, scheduled_time) < now() - make_interval(days => $1)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), runs AS (
    DELETE FROM task_schedule_default s USING doomed
    WHERE s.id = doomed.id AND s.scheduled_time = doomed.scheduled_time RETURNING s.id, s.scheduled_time
), results AS (
    DELETE FROM task_results r USING runs WHERE r.run_id = runs.id AND r.scheduled_time = runs.scheduled_time
), audit AS (
    DELETE FROM run_audit a USING runs WHERE a.run_id = runs.id RETURNING 1
)
SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM audit) AS audit
"""

# Results and audit rows left in the default partitions by their own age.
PURGE_RESULTS = """
WITH doomed AS (
    SELECT ctid FROM task_results_default WHERE finished_at < now() - make_interval(days => $1) LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM task_results_default WHERE ctid = ANY (ARRAY(SELECT ctid FROM doomed))
"""

PURGE_AUDIT = """
WITH doomed AS (
    SELECT ctid FROM run_audit_default WHERE at < now() - make_interval(days => $1) LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM run_audit_default WHERE ctid = ANY (ARRAY(SELECT ctid FROM doomed))
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
