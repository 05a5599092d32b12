"""Task definitions: creating (with the single run of a one-off task, in the same transaction), reading, listing,
editing, pausing and deleting them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from taskmill.cron import ScheduleError
from taskmill.db import Connection, db_now, jsonb, retry_conflicts
from taskmill.models import Task, TaskCreate
from taskmill.schedules import densest_s, occurrences
from taskmill.secrets import changed, digests, seal
from taskmill.states import ScheduleKind
from taskmill.store.runs import cancel_unpublished_runs
from taskmill.store.schedule import insert_runs
from taskmill.tracing import traceparent

# The columns a definition sets, in the order _definition gives them, then who created it and its secrets.
_COLUMNS = """name, type, payload, schedule_kind, cron, every_seconds, run_at, timezone, active, max_retries,
    retry_delay_seconds, backoff, timeout_seconds, estimated_ms, created_by, secrets, secret_names, misfire,
    misfire_grace_seconds, catchup_window_seconds, window_seconds, overlap, max_concurrency, concurrency_key,
    priority"""

INSERT_TASK = f"""
INSERT INTO tasks ({_COLUMNS}, origin, secret_digests)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24,
        $25, $26, $27)
RETURNING *
"""

# A run made here carries the trace context of the request making it, when traces are on (taskmill/tracing.py). A
# paused one-off's run is held back from the claim (see HOLD_ONE_OFF_RUNS).
INSERT_RUN = """
INSERT INTO task_schedule (task_id, scheduled_time, created_by, traceparent, lease_until, one_off)
VALUES ($1, coalesce($2, now()), $3, $4, CASE WHEN $5 THEN 'infinity'::timestamptz END, $6)
ON CONFLICT (task_id, scheduled_time) DO NOTHING
RETURNING id
"""


def _policy(spec: TaskCreate) -> tuple[object, ...]:
    """The schedule policy columns, in the order INSERT_TASK and UPDATE_TASK take them (after the secrets)."""
    return (
        spec.misfire,
        spec.misfire_grace_seconds,
        spec.catchup_window_seconds,
        spec.window_seconds,
        spec.overlap,
        spec.max_concurrency,
        spec.concurrency_key,
        spec.priority,
    )


def _definition(spec: TaskCreate) -> tuple[object, ...]:
    """The definition columns, in the order INSERT_TASK and UPDATE_TASK take them."""
    s = spec.schedule
    return (
        spec.name,
        spec.type,
        spec.payload,
        s.kind.value,
        s.cron,
        s.every_seconds,
        s.at,
        s.timezone,
        spec.active,
        spec.max_retries,
        spec.retry_delay_seconds,
        spec.backoff,
        spec.timeout_seconds,
        spec.estimated_ms,
    )


Origin = Literal["api", "defer", "submit", "spawn"]


async def create_task(
    conn: Connection, spec: TaskCreate, *, created_by: str | None = None, secret_key: str = "", origin: Origin = "api"
) -> Task:
    """Inserts a task; an immediate or once task gets its run now. Runs inside the caller's transaction if any,
    so a caller that rolls back has scheduled nothing. `origin`: who makes it (`defer` and `submit` make the one-off
    row of a single run, left out of the listing and purged with its run)."""
    s = spec.schedule
    async with conn.transaction():
        record = await conn.fetchrow(
            INSERT_TASK,
            *_definition(spec),
            created_by,
            seal(secret_key, spec.secret_values()),
            sorted(spec.secrets),
            *_policy(spec),
            origin,
            digests(secret_key, spec.secret_values()),
        )
        assert record is not None
        task = Task.from_record(record)
        if s.kind in (ScheduleKind.IMMEDIATE, ScheduleKind.ONCE):  # made paused: its run is held until resumed
            at = s.at if s.kind is ScheduleKind.ONCE else None
            await add_run(conn, task.id, at, created_by=created_by, held=not spec.active, one_off=True)
    return task


async def add_run(
    conn: Connection,
    task_id: int,
    at: datetime | None,
    *,
    created_by: str | None = None,
    held: bool = False,
    one_off: bool = False,
) -> int | None:
    """One run of a task at `at` (now when None), held back from the claim while `held` (a paused one-off's); `one_off`:
    the one-off task's own run (see DROP_ONE_OFF_RUN). None if that instant already has a run."""
    run_id: int | None = await conn.fetchval(INSERT_RUN, task_id, at, created_by, traceparent(), held, one_off)
    return run_id


# Future runs that have not been handed out yet go; the scheduler (woken by the tasks trigger's NOTIFY)
# materializes the new schedule from now on. Past and in-flight runs stay, with their history.
# The task row is locked first, in its own statement: a scheduler that is materializing the task holds that lock
# until it commits, and the DELETE, taking a fresh snapshot after the wait, then sees the runs it inserted.
LOCK_TASK = "SELECT * FROM tasks WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"

# The most occurrences an edit or a pause makes of the definition it ends (the latest ones): what a scheduler that
# was down would have caught up with (see record_due_occurrences).
DUE_BUDGET = 10_000


async def record_due_occurrences(conn: Connection, locked: asyncpg.Record) -> None:
    """The occurrences of an active recurring task's definition that fell due and that no scheduler has made yet (one
    was down, or busy), made now that an edit or a pause ends that definition: every expected occurrence ends in a
    recorded state, as a run or skipped, the claim applying the misfire policy to them. At most DUE_BUDGET of the
    latest. `locked`: the task's row, locked (LOCK_TASK), as it was before the change."""
    task = Task.from_record(locked)
    if not task.active or task.schedule_kind not in (ScheduleKind.CRON, ScheduleKind.INTERVAL):
        return
    now = await db_now(conn)
    start = max(task.schedule_from, locked["materialized_until"] or task.schedule_from)
    start = max(start, now - timedelta(seconds=densest_s(task.cron, task.every_seconds) * DUE_BUDGET))
    if start >= now:
        return
    try:
        times = await asyncio.to_thread(occurrences, task, start, now, DUE_BUDGET)
    except ScheduleError:
        return  # the scheduler could not have made them either (it logs why)
    await insert_runs(conn, [task.id] * len(times), times)


DROP_FUTURE_RUNS = """
DELETE FROM task_schedule WHERE task_id = $1 AND status = 'scheduled' AND scheduled_time > now()
"""
# What an edit drops of the runs not handed out yet, by the task's new kind: a `once` task's single run is made
# again at its (new) time, so a one-off's run goes whenever it was due (a recurring task's occurrences that fell
# due stay: they were owed); an immediate task keeps the run it was made with; a recurring one drops its future
# runs and a one-off's own run still held by a pause (the task was a one-off before the edit).
DROP_HELD = " OR task_id = $1 AND status = 'scheduled' AND lease_until = 'infinity' AND one_off"
DROP_ON_EDIT = {
    ScheduleKind.ONCE: DROP_FUTURE_RUNS + DROP_HELD,
    ScheduleKind.IMMEDIATE: DROP_FUTURE_RUNS,
    ScheduleKind.CRON: DROP_FUTURE_RUNS + DROP_HELD,
}
DROP_ON_EDIT[ScheduleKind.INTERVAL] = DROP_ON_EDIT[ScheduleKind.CRON]
# A one-off edited into a `once` task: its own run goes, due or not, and is made again at the new time. Occurrences
# an earlier recurring definition owed (kept when it was edited into this one-off) stay.
DROP_ONE_OFF_RUN = """
DELETE FROM task_schedule WHERE task_id = $1 AND status = 'scheduled' AND (one_off OR scheduled_time > now())
"""
# What the claim held of a paused one-off's other runs (the occurrences an earlier recurring definition owed, a run
# asked for by invoke): released by an edit, so that the claim decides on them under the new definition (run, or
# skipped as missed or paused), never left held by a task that is no longer a paused one-off.
RELEASE_HELD = """
UPDATE task_schedule SET lease_until = NULL
WHERE task_id = $1 AND status = 'scheduled' AND lease_until = 'infinity' AND NOT one_off
"""
RESTART_SCHEDULE = """
UPDATE tasks SET materialized_until = NULL, schedule_from = now(), updated_at = now(), active = $2 WHERE id = $1
RETURNING *
"""


# A one-off keeps its own run while paused, held back from the claim (a scheduled row's lease holds it); resumed,
# every run of it held is released (the claim holds any run of a paused one-off that falls due: claim_due_runs), and
# if its time passed meanwhile the claim treats it as its misfire policy says. Occurrences that an earlier recurring
# definition owed are not its own run: a pause does not hold them, and an edit does not drop them (DROP_HELD).
HOLD_ONE_OFF_RUNS = """
UPDATE task_schedule SET lease_until = CASE WHEN $2 THEN NULL ELSE 'infinity'::timestamptz END
WHERE task_id = $1 AND status = 'scheduled' AND CASE WHEN $2 THEN lease_until = 'infinity' ELSE one_off END
"""
SET_ACTIVE = "UPDATE tasks SET active = $2, updated_at = now() WHERE id = $1 RETURNING *"


async def set_active(conn: Connection, task_id: int, active: bool) -> Task | None:
    """A recurring task: deactivating drops its future runs (what fell due and is not handed out yet, the claim
    skips: claim_due_runs in taskmill/schema.sql), activating schedules from now on (occurrences while
    it was paused were not expected). A one-off keeps its run, held while paused (see HOLD_ONE_OFF_RUNS). None
    when there is no such task."""
    async with conn.transaction():
        locked = await conn.fetchrow(LOCK_TASK, task_id)
        if locked is None:
            return None
        kind = locked["schedule_kind"]
        if kind in (ScheduleKind.ONCE, ScheduleKind.IMMEDIATE):
            await conn.execute(HOLD_ONE_OFF_RUNS, task_id, active)
            record = await conn.fetchrow(SET_ACTIVE, task_id, active)
        else:
            await record_due_occurrences(conn, locked)
            await conn.execute(DROP_FUTURE_RUNS, task_id)
            record = await conn.fetchrow(RESTART_SCHEDULE, task_id, active)
    assert record is not None
    return Task.from_record(record)


UPDATE_TASK = """
UPDATE tasks SET name = $2, type = $3, payload = $4, schedule_kind = $5, cron = $6, every_seconds = $7,
    run_at = $8, timezone = $9, active = $10, max_retries = $11, retry_delay_seconds = $12, backoff = $13,
    timeout_seconds = $14, estimated_ms = $15, materialized_until = NULL, schedule_from = now(), updated_at = now(),
    secrets = CASE WHEN $16 THEN $17 ELSE secrets END,
    secret_names = CASE WHEN $16 THEN $18 ELSE secret_names END,
    secret_digests = CASE WHEN $16 THEN $27::jsonb ELSE secret_digests END,
    misfire = $19, misfire_grace_seconds = $20, catchup_window_seconds = $21, window_seconds = $22, overlap = $23,
    max_concurrency = $24, concurrency_key = $25, priority = $26
WHERE id = $1
RETURNING *
"""


async def update_task(conn: Connection, task_id: int, spec: TaskCreate, *, secret_key: str = "") -> Task | None:
    """Replaces a task's definition; its future scheduled runs go and are materialized again from the new one.
    Past and in-flight runs keep their history. Secrets are kept unless the new definition names them (they
    cannot be read back to be sent again). None when there is no such task."""
    replace_secrets = "secrets" in spec.model_fields_set
    sealed = seal(secret_key, spec.secret_values()) if replace_secrets else None
    digested = digests(secret_key, spec.secret_values()) if replace_secrets else {}
    s = spec.schedule
    async with conn.transaction():
        locked = await conn.fetchrow(LOCK_TASK, task_id)
        if locked is None:
            return None
        await record_due_occurrences(conn, locked)
        was_one_off = locked["schedule_kind"] in (ScheduleKind.ONCE, ScheduleKind.IMMEDIATE)
        if s.kind is ScheduleKind.ONCE and was_one_off:
            await conn.execute(DROP_ONE_OFF_RUN, task_id)
        else:
            await conn.execute(DROP_ON_EDIT[s.kind], task_id)
        await conn.execute(RELEASE_HELD, task_id)
        record = await conn.fetchrow(
            UPDATE_TASK,
            task_id,
            *_definition(spec),
            replace_secrets,
            sealed,
            sorted(spec.secrets),
            *_policy(spec),
            digested,
        )
        assert record is not None
        task = Task.from_record(record)
        if s.kind is ScheduleKind.ONCE:  # paused, its run is made held, as pausing would have left it
            await add_run(conn, task.id, s.at, created_by=task.created_by, held=not spec.active, one_off=True)
        elif s.kind is ScheduleKind.IMMEDIATE:  # the run it kept: held or released as the edit sets `active`
            await conn.execute(HOLD_ONE_OFF_RUNS, task.id, spec.active)
    return task


# Deleting keeps the row (runs and results refer to it) and frees the name for a new task.
DELETE_TASK = """
UPDATE tasks SET deleted_at = now(), active = false, updated_at = now(), name = name || ' (deleted ' || id || ')'
WHERE id = $1
"""


async def delete_task(conn: Connection, task_id: int) -> bool:
    """Soft-deletes a task and cancels its runs not yet handed out, the occurrences that fell due and no scheduler
    had made among them (recorded, then cancelled: every expected occurrence ends in a recorded state); history
    stays. A deadlock with the roles over its runs is settled by running it again (retry_conflicts)."""

    async def once() -> bool:
        async with conn.transaction():
            locked = await conn.fetchrow(LOCK_TASK, task_id)
            if locked is None:
                return False
            await record_due_occurrences(conn, locked)
            await cancel_unpublished_runs(conn, task_id)
            await conn.execute(DELETE_TASK, task_id)
        return True

    return await retry_conflicts(once)


# A whole batch of tasks in one statement, and the runs of its immediate and once tasks in the same one.
INSERT_TASKS = f"""
WITH new AS (
    INSERT INTO tasks ({_COLUMNS}, secret_digests)
    SELECT n, ty, p::jsonb, k, c, e, a, tz, act, mr, rd, b, t, est, $15, sec,
           ARRAY(SELECT jsonb_array_elements_text(sn::jsonb)), mf, mg, cw, w, ov, mc, ck, pr, sd::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::schedule_kind[], $5::text[], $6::int[], $7::timestamptz[],
                $8::text[], $9::bool[], $10::int[], $11::float8[], $12::float8[], $13::float8[], $14::int[],
                $16::bytea[], $17::text[], $18::text[], $19::int[], $20::int[], $21::int[], $22::text[],
                $23::int[], $24::text[], $25::smallint[], $27::text[])
        AS b(n, ty, p, k, c, e, a, tz, act, mr, rd, b, t, est, sec, sn, mf, mg, cw, w, ov, mc, ck, pr, sd)
    RETURNING id, name, schedule_kind, run_at, active, created_by
), runs AS (
    -- A one-off made paused has its run held until it is resumed, as pausing it would have left it.
    INSERT INTO task_schedule (task_id, scheduled_time, created_by, traceparent, lease_until, one_off)
    SELECT id, coalesce(run_at, now()), created_by, $26, CASE WHEN NOT active THEN 'infinity'::timestamptz END, true
    FROM new WHERE schedule_kind IN ('immediate', 'once')
)
SELECT id, name FROM new ORDER BY id
"""


async def create_tasks(
    conn: Connection, specs: list[TaskCreate], *, created_by: str | None = None, secret_key: str = ""
) -> list[tuple[int, str]]:
    """Inserts every task or none (one statement); returns (id, name) in order."""
    # The definition columns of every task, transposed into one array per column (payloads as JSON text).
    columns = [list(column) for column in zip(*(_definition(t) for t in specs), strict=True)]
    columns[2] = [jsonb(payload) for payload in columns[2]]
    rows = await conn.fetch(
        INSERT_TASKS,
        *columns,
        created_by,
        [seal(secret_key, t.secret_values()) for t in specs],
        [jsonb(sorted(t.secrets)) for t in specs],
        *[list(column) for column in zip(*(_policy(t) for t in specs), strict=True)],
        traceparent(),
        [jsonb(digests(secret_key, t.secret_values())) for t in specs],
    )
    return [(r["id"], r["name"]) for r in rows]


# A one-off is completed once it has runs and none of them is still to end.
COMPLETED = """(t.schedule_kind IN ('once', 'immediate')
    AND EXISTS (SELECT 1 FROM task_schedule s WHERE s.task_id = t.id)
    AND NOT EXISTS (SELECT 1 FROM task_schedule s WHERE s.task_id = t.id
                    AND s.status NOT IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped')))"""
GET_TASK = f"SELECT t.*, {COMPLETED} AS completed FROM tasks t WHERE t.id = $1 AND t.deleted_at IS NULL"
# Deleted tasks keep their history: their runs can still be read.
TASK_EVER_EXISTED = "SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1)"
TAKEN_NAMES = "SELECT name FROM tasks WHERE name = ANY($1::text[]) AND workflow_id IS NULL ORDER BY name"


async def get_task(conn: Connection | asyncpg.Pool, task_id: int) -> Task | None:
    """The task, unless there is none or it was deleted."""
    record = await conn.fetchrow(GET_TASK, task_id)
    return None if record is None else Task.from_record(record)


async def task_ever_existed(conn: Connection | asyncpg.Pool, task_id: int) -> bool:
    return bool(await conn.fetchval(TASK_EVER_EXISTED, task_id))


async def taken_names(conn: Connection, names: list[str]) -> list[str]:
    """Which of `names` tasks already have (deleted tasks have given theirs up)."""
    return [r["name"] for r in await conn.fetch(TAKEN_NAMES, names)]


# Sort keys, each a column and its SQL type; a column name comes only from here, never from a request.
SORTS: dict[str, str] = {"id": "bigint", "name": "text", "created_at": "timestamptz", "type": "text"}
SortKey = Literal["id", "-id", "name", "-name", "created_at", "-created_at", "type", "-type"]


# Each listed task's next run (the first not started yet after now) and its latest run up to now (whatever became of
# it), looked up once the page is cut, each on UNIQUE (task_id, scheduled_time). A walk over every day's partition
# reads one index entry a partition even when the run is in the first: so the day next to now is walked first, and
# the rest only when it has none (a UNION ALL stops at its LIMIT). On 423,750 runs in 46 partitions, a page of 21
# tasks run every few minutes read 234 buffers instead of 2,691 (0.8 ms instead of 3.6 ms), one of tasks last run a
# day ago or more 2,737 (2.0 ms); index scans only. Planning takes 12 ms, as the listing's did before (`completed`
# looks at every partition too).
_NEXT_AND_LAST = """
LEFT JOIN LATERAL (
    SELECT * FROM (
        (SELECT s.scheduled_time FROM task_schedule s
         WHERE s.task_id = page.id AND s.scheduled_time > now() AND s.scheduled_time <= now() + interval '1 day'
           AND s.status IN ('scheduled', 'queued', 'blocked')
         ORDER BY s.scheduled_time LIMIT 1)
        UNION ALL
        (SELECT s.scheduled_time FROM task_schedule s
         WHERE s.task_id = page.id AND s.scheduled_time > now() + interval '1 day'
           AND s.status IN ('scheduled', 'queued', 'blocked')
         ORDER BY s.scheduled_time LIMIT 1)
    ) AS next LIMIT 1
) n ON true
LEFT JOIN LATERAL (
    SELECT * FROM (
        (SELECT s.id, s.status::text AS status, s.scheduled_time, s.finished_at FROM task_schedule s
         WHERE s.task_id = page.id AND s.scheduled_time <= now() AND s.scheduled_time > now() - interval '1 day'
         ORDER BY s.scheduled_time DESC LIMIT 1)
        UNION ALL
        (SELECT s.id, s.status::text AS status, s.scheduled_time, s.finished_at FROM task_schedule s
         WHERE s.task_id = page.id AND s.scheduled_time <= now() - interval '1 day'
         ORDER BY s.scheduled_time DESC LIMIT 1)
    ) AS last LIMIT 1
) l ON true
"""


def _list_sql(column: str, descending: bool) -> str:
    order = "DESC" if descending else "ASC"
    return f"""
SELECT page.*, n.scheduled_time AS next_run_at, l.id AS last_run_id, l.status AS last_run_status,
       l.scheduled_time AS last_run_at, l.finished_at AS last_run_finished_at
FROM (
    SELECT t.*, {COMPLETED} AS completed FROM tasks t
    -- A workflow's steps are listed with their workflow; the one-off rows of defer, submit and spawn only when
    -- asked for.
    WHERE deleted_at IS NULL AND workflow_id IS NULL AND origin = ANY ($8::text[]) AND ($1::text IS NULL OR type = $1)
      AND ($2::boolean IS NULL OR active = $2) AND ($3::text IS NULL OR starts_with(name, $3))
      AND ($4::{SORTS[column]} IS NULL OR ({column}, id) {"<" if descending else ">"} ($4::{SORTS[column]}, $5::bigint))
      AND ($7::boolean IS NULL OR {COMPLETED} = $7)
    ORDER BY {column} {order}, id {order} LIMIT $6
) page
{_NEXT_AND_LAST}
ORDER BY page.{column} {order}, page.id {order}
"""


@dataclass(frozen=True, slots=True)
class LastRun:
    id: int
    status: str
    scheduled_time: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ListedTask(Task):
    """A task as the listing gives it: with its next run and its latest one."""

    next_run_at: datetime | None = None  # the first run after now not started yet
    last_run: LastRun | None = None  # the latest run scheduled up to now, whatever became of it

    @classmethod
    def of_listing(cls, r: asyncpg.Record) -> ListedTask:
        task = Task.from_record(r)
        last = None
        if r["last_run_id"] is not None:
            last = LastRun(r["last_run_id"], r["last_run_status"], r["last_run_at"], r["last_run_finished_at"])
        return cls(**{f.name: getattr(task, f.name) for f in fields(Task)}, next_run_at=r["next_run_at"], last_run=last)


async def list_tasks(
    conn: Connection | asyncpg.Pool,
    *,
    type: str | None = None,
    active: bool | None = None,
    name_prefix: str | None = None,
    completed: bool | None = None,
    origins: Sequence[Origin] = ("api",),
    sort: SortKey = "id",
    after: tuple[Any, int] | None = None,
    limit: int = 50,
) -> list[ListedTask]:
    """Keyset pagination: `after` is the (sort value, id) of the last task of the page before, the value of the
    sort column's type (an int, a str, an aware datetime). Stable under inserts, one index range a page. Each task
    comes with its next run and its latest one."""
    column = sort.lstrip("-")
    value, last_id = after if after is not None else (None, 0)
    rows = await conn.fetch(
        _list_sql(column, sort.startswith("-")),
        type,
        active,
        name_prefix,
        value,
        last_id,
        limit,
        completed,
        list(origins),
    )
    return [ListedTask.of_listing(r) for r in rows]


# Secret rotation (`taskmill rotate-secrets`): every task's sealed secrets, a batch at a time in id order; a write
# lands only where the secrets are still the ones read, so an edit made meanwhile is never overwritten.
SEALED = "SELECT id, secrets FROM tasks WHERE secrets IS NOT NULL AND id > $1 ORDER BY id LIMIT $2"
RESEAL = """
UPDATE tasks t SET secrets = b.sealed
FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS b(id, was, sealed)
WHERE t.id = b.id AND t.secrets = b.was
"""


async def sealed_secrets(conn: Connection, after_id: int, limit: int) -> list[tuple[int, bytes]]:
    return [(r["id"], r["secrets"]) for r in await conn.fetch(SEALED, after_id, limit)]


async def reseal_secrets(conn: Connection, changes: list[tuple[int, bytes, bytes]]) -> int:
    """(task id, the secrets read, the same re-encrypted) for each; how many were written."""
    if not changes:
        return 0
    ids, was, sealed = (list(column) for column in zip(*changes, strict=True))
    status: str = await conn.execute(RESEAL, ids, was, sealed)
    return int(status.rsplit(" ", 1)[1])


SECRET_DIGESTS = "SELECT secret_digests FROM tasks WHERE id = $1 AND deleted_at IS NULL"


async def secrets_changed(
    conn: Connection | asyncpg.Pool, task_id: int, values: dict[str, str], secret_key: str
) -> list[str] | None:
    """The names among `values` whose value is not the task's stored one (by their keyed digests: nothing is
    decrypted); None when there is no such task."""
    stored = await conn.fetchrow(SECRET_DIGESTS, task_id)
    if stored is None:
        return None
    return changed(secret_key, values, stored["secret_digests"])
