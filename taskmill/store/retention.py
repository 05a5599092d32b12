"""The janitor's row-by-row purge, for what the dropping of whole days (taskmill/store/partitions.py) leaves: the
rows of the DEFAULT partitions (runs scheduled beyond the prepared days, runs of a retired day that were not over,
rows written while a day was missing), one batch per statement.

Each statement picks its batch with `FOR UPDATE SKIP LOCKED`, so any number of janitors share the work without
waiting on each other or deleting a row twice, and each batch is its own short transaction. The cutoff is the
database's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

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


# What workflows and subtasks keep beside their runs (migration 0013): the edges, the children's counts and the
# workflow runs, once as old as the retention (a workflow run only once it ended).
PURGE_FLOW = """
WITH links AS (
    DELETE FROM run_links WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM run_links WHERE created_at < now() - make_interval(days => $1) LIMIT $2
        FOR UPDATE SKIP LOCKED))
    RETURNING 1
), children AS (
    DELETE FROM run_children WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM run_children WHERE created_at < now() - make_interval(days => $1) LIMIT $2
        FOR UPDATE SKIP LOCKED))
    RETURNING 1
), workflow_runs AS (
    DELETE FROM workflow_runs WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM workflow_runs
        WHERE status <> 'running' AND coalesce(finished_at, created_at) < now() - make_interval(days => $1) LIMIT $2
        FOR UPDATE SKIP LOCKED))
    RETURNING 1
)
SELECT greatest((SELECT count(*) FROM links), (SELECT count(*) FROM children), (SELECT count(*) FROM workflow_runs))
"""


# The one-off rows that defer, the submit queue and spawning runs make for a single run (migration 0017), once that
# run is gone (its day dropped, or purged above), oldest first. Such a run lies at its row's `run_at` (a deferred
# run's `at`) or when the row was made, which orders the list (tasks_one_off) and bounds it by the retention.
PURGE_ONE_OFF_TASKS = """
DELETE FROM tasks WHERE id IN (
    SELECT t.id FROM tasks t
    WHERE t.origin <> 'api' AND coalesce(t.run_at, t.created_at) < now() - make_interval(days => $1)
      AND NOT EXISTS (SELECT 1 FROM task_schedule s WHERE s.task_id = t.id)
    ORDER BY coalesce(t.run_at, t.created_at)
    LIMIT $2
    FOR UPDATE SKIP LOCKED)
"""


@dataclass(frozen=True, slots=True)
class Purged:
    """Rows one batch deleted."""

    runs: int = 0
    results: int = 0
    audit: int = 0
    flow: int = 0  # the most rows of one kind of flow rows (edges, children's counts, workflow runs)
    tasks: int = 0  # one-off task rows


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


async def purge_flow(conn: Connection, days: int, batch: int) -> Purged:
    flow: int = await conn.fetchval(PURGE_FLOW, days, batch)
    return Purged(flow=flow)


async def purge_one_off_tasks(conn: Connection, days: int, batch: int) -> Purged:
    """One batch of one-off task rows whose run is gone."""
    try:
        status: str = await conn.execute(PURGE_ONE_OFF_TASKS, days, batch)
    except asyncpg.ForeignKeyViolationError:
        # A run was added to one of them (an invoke of an old deferred run's task) after this statement's snapshot:
        # nothing of the batch went; the next pass decides again.
        return Purged()
    return Purged(tasks=int(status.rsplit(" ", 1)[1]))
