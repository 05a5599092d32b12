"""Workflows: their definitions (a row and one task per step), their runs (one run per step, linked by their
dependencies) and what reads them. What follows a step's outcome is the database's own work (run_flow, migration
0013)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from taskmill.db import Connection, jsonb, retry_conflicts
from taskmill.secrets import changed, digests, seal
from taskmill.tracing import traceparent
from taskmill.workflows import Step, Workflow, WorkflowCreate

# The step columns a definition sets; compared as they are stored, to tell a change from a repeat.
_STEP_FIELDS = (
    "name",
    "type",
    "payload",
    "max_retries",
    "retry_delay_seconds",
    "backoff",
    "timeout_seconds",
    "estimated_ms",
    "priority",
    "depends_on",
    "continue_on_failure",
)

INSERT_WORKFLOW = """
INSERT INTO workflows (name, description, schedule_kind, cron, every_seconds, run_at, timezone, active, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING *
"""

UPDATE_WORKFLOW = """
UPDATE workflows SET description = $2, schedule_kind = $3, cron = $4, every_seconds = $5, run_at = $6,
    timezone = $7, active = $8, updated_at = now(), schedule_from = now(), materialized_until = NULL
WHERE id = $1
RETURNING *
"""

INSERT_STEPS = """
INSERT INTO tasks (workflow_id, schedule_kind, created_by, name, type, payload, max_retries, retry_delay_seconds,
                   backoff, timeout_seconds, estimated_ms, depends_on, continue_on_failure, secrets, secret_names,
                   priority, secret_digests)
SELECT $1, 'immediate', $2, n, ty, p::jsonb, mr, rd, b, t, est,
       ARRAY(SELECT jsonb_array_elements_text(d::jsonb)), cof, sec, ARRAY(SELECT jsonb_array_elements_text(sn::jsonb)),
       pr, sd::jsonb
FROM unnest($3::text[], $4::text[], $5::text[], $6::int[], $7::float8[], $8::float8[], $9::float8[], $10::int[],
            $11::text[], $12::bool[], $13::bytea[], $14::text[], $15::smallint[], $16::text[])
    AS b(n, ty, p, mr, rd, b, t, est, d, cof, sec, sn, pr, sd)
"""

STEPS = f"""
SELECT id, workflow_id, {", ".join(_STEP_FIELDS)}, secret_names FROM tasks
WHERE workflow_id = ANY($1::bigint[]) AND deleted_at IS NULL ORDER BY id
"""

RETIRE_STEPS = "UPDATE tasks SET deleted_at = now(), active = false, updated_at = now() WHERE workflow_id = $1"

# Workflow runs created ahead whose steps have not started: an edit or a deletion drops them (the scheduler
# creates them again from the new definition).
DROP_FUTURE_RUNS = """
WITH gone AS (
    DELETE FROM workflow_runs w
    WHERE w.workflow_id = $1 AND w.scheduled_time > now() AND w.status = 'running'
      AND NOT EXISTS (SELECT 1 FROM task_schedule s WHERE s.workflow_run_id = w.id
                        AND s.scheduled_time = w.scheduled_time AND s.status NOT IN ('scheduled', 'blocked'))
    RETURNING id, scheduled_time
), runs AS (
    DELETE FROM task_schedule s USING gone WHERE s.workflow_run_id = gone.id AND s.scheduled_time = gone.scheduled_time
    RETURNING s.id
)
DELETE FROM run_links l USING runs WHERE l.dependent_id = runs.id
"""

# One run of every step, all at the workflow run's time; a step without dependencies is due at once, the others
# wait blocked, counting their dependencies, each edge a row of run_links.
INVOKE = """
WITH steps AS (
    SELECT id, name, depends_on, continue_on_failure FROM tasks WHERE workflow_id = $1 AND deleted_at IS NULL
), w AS (
    INSERT INTO workflow_runs (workflow_id, scheduled_time, open, created_by)
    SELECT $1, coalesce($2, clock_timestamp()), (SELECT count(*) FROM steps), $3
    ON CONFLICT (workflow_id, scheduled_time) DO NOTHING
    RETURNING id, scheduled_time
), runs AS (
    INSERT INTO task_schedule (task_id, scheduled_time, status, blockers, workflow_run_id, created_by, traceparent)
    SELECT s.id, w.scheduled_time,
           CASE WHEN cardinality(s.depends_on) = 0 THEN 'scheduled' ELSE 'blocked' END::run_status,
           cardinality(s.depends_on), w.id, $3, $4
    FROM w CROSS JOIN steps s
    RETURNING id, task_id, scheduled_time
), links AS (
    INSERT INTO run_links (upstream_id, dependent_id, dependent_time, continue_on_failure)
    SELECT u.id, d.id, d.scheduled_time, us.continue_on_failure
    FROM runs d JOIN steps ds ON ds.id = d.task_id
    CROSS JOIN LATERAL unnest(ds.depends_on) AS dep(name)
    JOIN steps us ON us.name = dep.name
    JOIN runs u ON u.task_id = us.id
)
SELECT id FROM w
"""
# A deleted workflow's steps that have not started are cancelled (those out already finish, as a deleted task's do); a
# cancelled workflow run's steps that have not ended.
NOT_STARTED = ["blocked", "scheduled", "queued", "retrying"]

WORKFLOW_RUN = """
SELECT w.id, f.name AS workflow, w.status, w.scheduled_time, w.created_at, w.finished_at, w.created_by
FROM workflow_runs w JOIN workflows f ON f.id = w.workflow_id WHERE w.id = $1
"""

WORKFLOW_RUN_STEPS = """
SELECT t.name AS task, s.id AS run_id, s.status, s.started_at, s.finished_at, s.error, s.attempt, t.type,
       t.depends_on
FROM task_schedule s JOIN tasks t ON t.id = s.task_id
WHERE s.workflow_run_id = $1 AND s.scheduled_time = $2
ORDER BY s.id
"""

# The workflow runs still running, of one run ($1) or of a whole workflow ($2), and their steps in one of the states
# $3 (a running one is stopped by its processor; what a step spawned goes with it, see run_flow); the workflow runs
# cancelled come back.
CANCEL_RUNS = """
WITH w AS (
    UPDATE workflow_runs SET status = 'cancelled'
    WHERE (id = $1 OR workflow_id = $2) AND status = 'running'
    RETURNING id, scheduled_time
), steps AS (
    UPDATE task_schedule s SET status = 'cancelled', finished_at = now(), lease_until = NULL, error = 'cancelled'
    FROM w
    WHERE s.workflow_run_id = w.id AND s.scheduled_time = w.scheduled_time
      AND s.status = ANY ($3::run_status[])
)
SELECT id FROM w
"""


@dataclass(frozen=True, slots=True)
class Stored:
    """A workflow as stored: its row and its steps in definition order, with their secrets' names."""

    workflow: Workflow
    steps: list[dict[str, Any]]


def _schedule_columns(spec: WorkflowCreate) -> tuple[object, ...]:
    s = spec.schedule
    if s is None:
        return (None, None, None, None, "UTC")
    return (s.kind.value, s.cron, s.every_seconds, s.at, s.timezone)


async def _insert_steps(
    conn: Connection, workflow_id: int, steps: list[Step], created_by: str | None, secret_key: str
) -> None:
    await conn.execute(
        INSERT_STEPS,
        workflow_id,
        created_by,
        [s.name for s in steps],
        [s.type for s in steps],
        [jsonb(s.payload) for s in steps],
        [s.max_retries for s in steps],
        [s.retry_delay_seconds for s in steps],
        [s.backoff for s in steps],
        [s.timeout_seconds for s in steps],
        [s.estimated_ms for s in steps],
        [jsonb(s.depends_on) for s in steps],
        [s.continue_on_failure for s in steps],
        [seal(secret_key, s.secret_values()) for s in steps],
        [jsonb(sorted(s.secrets)) for s in steps],
        [s.priority for s in steps],
        [jsonb(digests(secret_key, s.secret_values())) for s in steps],
    )


async def create_workflow(
    conn: Connection, spec: WorkflowCreate, *, created_by: str | None = None, secret_key: str = ""
) -> Stored:
    """Inserts the workflow and its steps (asyncpg.UniqueViolationError if the name is taken)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            INSERT_WORKFLOW, spec.name, spec.description, *_schedule_columns(spec), spec.active, created_by
        )
        assert row is not None
        await _insert_steps(conn, row["id"], spec.tasks, created_by, secret_key)
        return Stored(Workflow.from_record(row), (await _steps_of(conn, [row["id"]])).get(row["id"], []))


def _same_steps(spec: WorkflowCreate, stored: list[dict[str, Any]]) -> bool:
    """Whether the definition's steps are the stored ones (secrets compared by name: their values are write-only)."""
    wanted = [{**{f: getattr(s, f) for f in _STEP_FIELDS}, "secret_names": sorted(s.secrets)} for s in spec.tasks]
    have = [{k: v for k, v in s.items() if k != "id"} for s in stored]
    return wanted == have


async def update_workflow(
    conn: Connection, stored: Stored, spec: WorkflowCreate, *, created_by: str | None = None, secret_key: str = ""
) -> Stored:
    """Replaces the definition. Runs already started keep the steps they started with; runs created ahead that have
    not started are dropped and created again from the new definition."""
    wf = stored.workflow
    async with conn.transaction():
        await conn.execute("SELECT id FROM workflows WHERE id = $1 FOR UPDATE", wf.id)
        await conn.execute(DROP_FUTURE_RUNS, wf.id)
        row = await conn.fetchrow(UPDATE_WORKFLOW, wf.id, spec.description, *_schedule_columns(spec), spec.active)
        assert row is not None
        if not _same_steps(spec, stored.steps) or any(s.secrets for s in spec.tasks):
            await conn.execute(RETIRE_STEPS, wf.id)
            await _insert_steps(conn, wf.id, spec.tasks, created_by, secret_key)
        return Stored(Workflow.from_record(row), (await _steps_of(conn, [wf.id])).get(wf.id, []))


async def delete_workflow(conn: Connection, workflow_id: int) -> None:
    """Soft-deletes the workflow and its steps, and cancels what its runs have not started. CANCEL_RUNS locks a
    workflow run before its steps, where a processor recording a step locks the step, then (run_flow, counting it
    down) its workflow run: a deadlock PostgreSQL settles by rolling this back is run again (retry_conflicts); the
    model-based test saw it answer 503 before."""

    async def once() -> None:
        async with conn.transaction():
            await conn.execute(DROP_FUTURE_RUNS, workflow_id)
            await conn.execute(CANCEL_RUNS, None, workflow_id, NOT_STARTED)
            await conn.execute(RETIRE_STEPS, workflow_id)
            await conn.execute(
                "UPDATE workflows SET deleted_at = now(), active = false, updated_at = now() WHERE id = $1",
                workflow_id,
            )

    await retry_conflicts(once)


async def _steps_of(conn: Connection | asyncpg.Pool, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in await conn.fetch(STEPS, ids):
        step = {f: r[f] for f in _STEP_FIELDS}
        step["depends_on"] = list(step["depends_on"])
        step["secret_names"] = list(r["secret_names"])
        out.setdefault(r["workflow_id"], []).append({"id": r["id"], **step})
    return out


async def get_workflow(conn: Connection | asyncpg.Pool, name: str) -> Stored | None:
    row = await conn.fetchrow("SELECT * FROM workflows WHERE name = $1 AND deleted_at IS NULL", name)
    if row is None:
        return None
    return Stored(Workflow.from_record(row), (await _steps_of(conn, [row["id"]])).get(row["id"], []))


async def list_workflows(conn: Connection | asyncpg.Pool, after: str | None, limit: int) -> list[Stored]:
    """By name, `limit` from after the name `after`."""
    rows = await conn.fetch(
        "SELECT * FROM workflows WHERE deleted_at IS NULL AND ($1::text IS NULL OR name > $1) ORDER BY name LIMIT $2",
        after,
        limit,
    )
    steps = await _steps_of(conn, [r["id"] for r in rows])
    return [Stored(Workflow.from_record(r), steps.get(r["id"], [])) for r in rows]


async def invoke(
    conn: Connection | asyncpg.Pool, workflow_id: int, at: datetime | None = None, *, created_by: str | None = None
) -> int | None:
    """Creates a workflow run at `at` (now when None); None when that instant has one already."""
    run_id: int | None = await conn.fetchval(INVOKE, workflow_id, at, created_by, traceparent())
    return run_id


async def workflow_run(conn: Connection | asyncpg.Pool, run_id: int) -> dict[str, Any] | None:
    """The workflow run and each step's run, in step order."""
    row = await conn.fetchrow(WORKFLOW_RUN, run_id)
    if row is None:
        return None
    steps = await conn.fetch(WORKFLOW_RUN_STEPS, run_id, row["scheduled_time"])
    return {**dict(row), "runs": [{**dict(s), "depends_on": list(s["depends_on"])} for s in steps]}


async def recent_runs(conn: Connection | asyncpg.Pool, workflow_id: int, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, status, scheduled_time, created_at, finished_at, open, failed FROM workflow_runs "
        "WHERE workflow_id = $1 ORDER BY id DESC LIMIT $2",
        workflow_id,
        limit,
    )
    return [dict(r) for r in rows]


async def cancel_workflow_run(conn: Connection | asyncpg.Pool, run_id: int) -> bool:
    """Cancels the steps that have not ended (a running one is stopped by its processor) and what they spawned;
    False when the run had ended or does not exist. Run again on a deadlock with the roles, as delete_workflow."""
    statuses = [*NOT_STARTED, "running", "waiting"]
    return bool(await retry_conflicts(lambda: conn.fetch(CANCEL_RUNS, run_id, None, statuses)))


STEP_SECRET_DIGESTS = """
SELECT name, secret_digests FROM tasks WHERE workflow_id = $1 AND deleted_at IS NULL AND name = ANY($2::text[])
"""


async def step_secrets_changed(
    conn: Connection | asyncpg.Pool, workflow_id: int, steps: dict[str, dict[str, str]], secret_key: str
) -> dict[str, list[str]]:
    """For each step named in `steps`, the names among its values that are not its stored ones (by their keyed
    digests: nothing is decrypted); a step that does not exist has all of them changed."""
    stored = {r["name"]: r["secret_digests"] for r in await conn.fetch(STEP_SECRET_DIGESTS, workflow_id, list(steps))}
    found = {name: changed(secret_key, values, stored.get(name, {})) for name, values in steps.items()}
    return {name: names for name, names in found.items() if names}
