"""Every statement that moves runs between states. Each takes a whole batch of runs: one statement a batch.

The database checks each move against `run_transitions` and writes the audit row (see 0001_schema.sql).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from taskmill.db import Connection
from taskmill.states import RunState

Conn = Connection | asyncpg.Pool

# The run message, built by PostgreSQL (the function run_message in taskmill/schema.sql).
_MESSAGE = "run_message(r.id, r.task_id, r.attempt, r.lost, r.scheduled_time, r.lease_until, t, r.released_at)"


@dataclass(frozen=True, slots=True)
class Outbound:
    """A run on its way to the broker: where it goes and the message body."""

    run_id: int
    type: str
    body: bytes
    status: RunState
    priority: int = 0  # the task's, 0-9: higher passes a backlog (routed to the urgent lane on RabbitMQ)
    traceparent: str | None = None  # the trace context of the API request that made the run (taskmill/tracing.py)
    reason: str | None = None  # a dead run's: why it is dead, for its dead letter


# The statement lives in the database (claim_due_runs in taskmill/schema.sql) to carry its planner settings.
CLAIM_DUE = "SELECT id, type, status, body, priority, traceparent FROM claim_due_runs($1, $2, $3, $4)"


def _outbound(records: list[asyncpg.Record]) -> list[Outbound]:
    return [
        Outbound(
            r["id"],
            r["type"],
            r["body"].encode(),
            RunState(r["status"]),
            r["priority"],
            r["traceparent"],
            r.get("reason"),
        )
        for r in records
    ]


async def claim_due(
    conn: Conn, limit: int, lease_s: float, lead_s: float = 0.0, at: datetime | None = None
) -> list[Outbound]:
    """Moves up to `limit` runs due within `lead_s` from scheduled to queued, oldest first, and those missed past
    their grace to skipped as their tasks' misfire policies say; returns the queued ones' messages. `at`: the clock
    (the database's when None)."""
    return _outbound(await conn.fetch(CLAIM_DUE, limit, lease_s, lead_s, at))


# On a scheduled row, lease_until holds the run back from the claim for a moment, so a broker that refuses
# a run is not asked again in a tight loop.
REVERT_TO_SCHEDULED = """
UPDATE task_schedule SET status = 'scheduled', queued_at = NULL, lease_until = now() + make_interval(secs => $2)
WHERE id = ANY($1::bigint[]) AND status = 'queued'
"""


async def revert_to_scheduled(conn: Conn, run_ids: Sequence[int], backoff_s: float) -> None:
    """Hands runs whose publish failed back to the claim, after `backoff_s`."""
    if run_ids:
        await conn.execute(REVERT_TO_SCHEDULED, list(run_ids), backoff_s)


# A paused one-off's run (held until it is resumed, lease_until 'infinity') is not coming due: the first other one,
# walking the due runs' index in order.
NEXT_DUE_IN = """
SELECT extract(epoch FROM min(scheduled_time) - now())::float8 - $1 FROM (
    SELECT scheduled_time FROM task_schedule
    WHERE status = 'scheduled' AND (lease_until IS NULL OR lease_until < 'infinity')
    ORDER BY scheduled_time LIMIT 1
) AS next
"""


async def next_due_in(conn: Conn, lead_s: float = 0.0) -> float | None:
    """Seconds until the earliest scheduled run is `lead_s` from due (negative when overdue), by the database
    clock; None when nothing is scheduled."""
    value: float | None = await conn.fetchval(NEXT_DUE_IN, lead_s)
    return value


# One statement, so one `now()`: a run is either won, or not due yet, or not this message's to start, or no run
# at all. (Asked in two statements, a run falling due between them looked lost and its message was dropped.)
# Every row is found by its primary key, (id, scheduled_time), its time naming its partition: the other conditions
# are written so that no other index can serve them
# (`(... ) IS TRUE`, `status::text`). A pooled connection plans each statement once, generically, and keeps the plan;
# planned while the table was empty, a `scheduled_time <= now()` chose the (scheduled_time, id) index and every
# batch of a burst then walked all of it: 114 M index entries read for 20,000 runs.
START = """
WITH b AS (
    SELECT * FROM unnest($1::bigint[], $3::int[], $4::float8[], $5::timestamptz[]) AS b(id, attempt, lease_s, at)
), won AS (
    UPDATE task_schedule s
    SET status = 'running', attempt = s.attempt + 1, started_at = now(), worker = $2, error = NULL,
        lease_until = now() + make_interval(secs => b.lease_s)
    FROM b
    WHERE s.id = b.id AND s.scheduled_time = b.at AND s.attempt = b.attempt - 1
      AND s.status::text IN ('scheduled', 'queued', 'retrying') AND (s.scheduled_time <= now()) IS TRUE
    RETURNING s.id, s.attempt
), early AS (
    SELECT s.id FROM b JOIN task_schedule s ON s.id = b.id AND s.scheduled_time = b.at
    WHERE s.status::text IN ('scheduled', 'queued', 'retrying') AND (s.scheduled_time > now()) IS TRUE
), unknown AS (
    SELECT b.id FROM b
    WHERE NOT EXISTS (SELECT 1 FROM task_schedule s WHERE s.id = b.id AND s.scheduled_time = b.at)
)
SELECT id, attempt, 'won' AS kind FROM won
UNION ALL SELECT id, NULL, 'early' FROM early
UNION ALL SELECT DISTINCT id, NULL::int, 'unknown' FROM unknown
"""


@dataclass(frozen=True, slots=True)
class StartRequest:
    run_id: int
    attempt: int
    lease_s: float
    scheduled_time: datetime  # with the id, the run's key (its partition)


class Start(enum.Enum):
    WON = "won"
    LOST = "lost"  # past queued, or the message is for another attempt (a stale redelivery)
    EARLY = "early"  # not due yet by the database clock: ask again in a moment
    UNKNOWN = "unknown"  # no such run: the message is not one of ours


async def start_runs(conn: Conn, worker: str, requests: Sequence[StartRequest]) -> list[Start]:
    """The compare-and-set into running, for a batch of deliveries."""
    rows = await conn.fetch(
        START,
        [q.run_id for q in requests],
        worker,
        [q.attempt for q in requests],
        [q.lease_s for q in requests],
        [q.scheduled_time for q in requests],
    )
    # Matched on (run, attempt): a stale copy in the same batch as the message that won must not think it won.
    won = {(r["id"], r["attempt"]) for r in rows if r["kind"] == "won"}
    other = {r["id"]: Start(r["kind"]) for r in rows if r["kind"] != "won"}
    out = []
    for q in requests:
        if (q.run_id, q.attempt) in won:
            out.append(Start.WON)
            won.discard((q.run_id, q.attempt))  # the same message twice in one batch: only the first wins
        else:
            out.append(other.get(q.run_id, Start.LOST))
    return out


FINISH = """
WITH b AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::run_status[], $4::text[], $5::text[], $6::float8[],
                         $7::timestamptz[], $8::float8[], $9::text[], $10::timestamptz[])
        AS b(id, attempt, status, result, error, retry_in_s, finished_at, duration_ms, type, at)
), done AS (
    UPDATE task_schedule s
    SET status = b.status,
        finished_at = CASE WHEN b.status = 'retrying' THEN NULL ELSE b.finished_at END,
        error = b.error,
        -- retrying: when the rescuer publishes the retry itself; dead: when it sends the dead letter itself, unless
        -- the processor's publish of it was confirmed first (letters_sent).
        lease_until = CASE WHEN b.status IN ('retrying', 'dead')
                           THEN b.finished_at + make_interval(secs => b.retry_in_s) END
    -- By primary key only (see START): `status = 'running'` would let a generic plan walk the whole partial index of
    -- runs in flight, which holds every run of a burst (152 M entries read for 20,000 runs).
    FROM b WHERE s.id = b.id AND s.scheduled_time = b.at AND s.status::text = 'running' AND s.attempt = b.attempt
    -- What the result needs of the outcome comes back with the row: no second join of the batch with itself.
    RETURNING s.id, s.started_at, s.worker, s.scheduled_time, b.attempt, b.status AS outcome, b.finished_at AS ended,
              b.duration_ms, b.result, b.error AS failure, b.type
), kept AS (
    INSERT INTO task_results (run_id, attempt, status, started_at, finished_at, duration_ms, worker, result, error,
                              type, scheduled_time)
    SELECT id, attempt, CASE WHEN outcome = 'retrying' THEN 'failed'::run_status ELSE outcome END,
           started_at, ended, duration_ms, worker, result::jsonb, failure, type, scheduled_time
    FROM done
    ON CONFLICT (run_id, scheduled_time, attempt) DO NOTHING
)
SELECT id FROM done
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    run_id: int
    attempt: int
    status: RunState  # succeeded, failed, dead or retrying
    result_json: str | None
    error: str | None
    finished_at: datetime
    duration_ms: float
    scheduled_time: datetime  # the run's: with the id, its key (its partition)
    # For retrying: when the rescuer may publish the retry itself if the delayed message never comes back.
    retry_lease_s: float = 0.0
    type: str | None = None  # the task type the attempt ran as (kept with the result for the per-type statistics)


async def finish_runs(conn: Conn, outcomes: Sequence[Outcome]) -> list[bool]:
    """Records each attempt's outcome and result; False where the run was no longer this attempt's."""
    rows = await conn.fetch(
        FINISH,
        [o.run_id for o in outcomes],
        [o.attempt for o in outcomes],
        [o.status.value for o in outcomes],
        [o.result_json for o in outcomes],
        [o.error for o in outcomes],
        [o.retry_lease_s for o in outcomes],
        [o.finished_at for o in outcomes],
        [o.duration_ms for o in outcomes],
        [o.type for o in outcomes],
        [o.scheduled_time for o in outcomes],
    )
    done = {r["id"] for r in rows}
    return [o.run_id in done for o in outcomes]


# After a statement whose reply was lost with the connection: did it commit? Only asked by the processor that
# sent it, so a restarted processor with the same worker name (a container's pid 1) never takes a run this way.
STARTED_BY = """
SELECT EXISTS (SELECT 1 FROM task_schedule
               WHERE id = $1 AND scheduled_time = $4 AND status = 'running' AND attempt = $2 AND worker = $3)
"""
# finished_at is the processor's own clock reading, so it tells this outcome from a rescuer's record of the attempt.
FINISHED_BY = """
SELECT EXISTS (SELECT 1 FROM task_results
               WHERE run_id = $1 AND scheduled_time = $5 AND attempt = $2 AND finished_at = $3 AND worker = $4)
"""


async def started_by(conn: Conn, worker: str, request: StartRequest) -> bool:
    """Whether `worker`'s claim of this attempt committed (and the run is still running it)."""
    return bool(await conn.fetchval(STARTED_BY, request.run_id, request.attempt, worker, request.scheduled_time))


async def finished_by(conn: Conn, worker: str, outcome: Outcome) -> bool:
    """Whether `worker`'s record of this outcome committed."""
    return bool(
        await conn.fetchval(
            FINISHED_BY, outcome.run_id, outcome.attempt, outcome.finished_at, worker, outcome.scheduled_time
        )
    )


RESCUE_WAITING = f"""
WITH stale AS (
    SELECT id, scheduled_time FROM task_schedule
    WHERE status IN ('queued', 'retrying') AND lease_until < now()
    ORDER BY lease_until LIMIT $1
    FOR UPDATE SKIP LOCKED
), r AS (
    UPDATE task_schedule s SET lease_until = now() + make_interval(secs => $2)
    FROM stale WHERE s.id = stale.id AND s.scheduled_time = stale.scheduled_time
    RETURNING s.id, s.task_id, s.attempt, s.lost, s.scheduled_time, s.lease_until, s.status, s.traceparent,
              s.released_at
)
SELECT r.id, t.type, r.status, {_MESSAGE} AS body, t.priority, r.traceparent FROM r JOIN tasks t ON t.id = r.task_id
"""

# A processor that died mid-run is not the task failing: the run goes to another processor as its next attempt, the
# task's retries untouched (its message counts the loss, see RunMessage.lost). A run that has lost more processors
# than the limit ($3) is dead: it may be what kills them.
RESCUE_LOST = f"""
WITH lost AS (
    SELECT s.id, s.scheduled_time FROM task_schedule s
    WHERE s.status = 'running' AND s.lease_until < now()
    ORDER BY s.lease_until LIMIT $1
    FOR UPDATE SKIP LOCKED
), r AS (
    UPDATE task_schedule s
    SET status = CASE WHEN s.lost >= $3 THEN 'dead'::run_status ELSE 'queued'::run_status END,
        lost = s.lost + 1,
        error = 'processor lost during attempt ' || s.attempt || CASE WHEN s.lost >= $3
            THEN ': it has lost ' || s.lost + 1 || ' processors, more than TASKMILL_LOST_LIMIT (' || $3
                 || ') allows; the run may be what kills them'
            ELSE '' END,
        finished_at = CASE WHEN s.lost >= $3 THEN now() END,
        queued_at = now(),
        -- dead: its dead letter is owed until the publish of it is confirmed (letters_sent)
        lease_until = now() + make_interval(secs => $2)
    FROM lost WHERE s.id = lost.id AND s.scheduled_time = lost.scheduled_time
    RETURNING s.id, s.task_id, s.attempt, s.lost, s.scheduled_time, s.lease_until, s.status, s.traceparent,
              s.released_at, s.started_at, s.worker, s.error
), kept AS (
    INSERT INTO task_results (run_id, attempt, status, started_at, finished_at, worker, error, type, scheduled_time)
    SELECT r.id, r.attempt, 'failed', r.started_at, now(), r.worker, r.error, t.type, r.scheduled_time
    FROM r JOIN tasks t ON t.id = r.task_id
    ON CONFLICT (run_id, scheduled_time, attempt) DO NOTHING
)
SELECT r.id, t.type, r.status, {_MESSAGE} AS body, t.priority, r.traceparent, r.error AS reason
FROM r JOIN tasks t ON t.id = r.task_id
"""


# Any run that has not ended: a running one is stopped by its processor (processor/cancel.py), and the children a
# run spawned that have not ended are cancelled with it (run_flow, taskmill/schema.sql).
CANCEL_RUN = """
UPDATE task_schedule SET status = 'cancelled', finished_at = now(), lease_until = NULL, error = 'cancelled'
WHERE id = $1 AND status IN ('blocked', 'scheduled', 'queued', 'retrying', 'running', 'waiting')
RETURNING id
"""

# A deleted task's runs not handed to the broker yet; those already out still run.
CANCEL_UNPUBLISHED_RUNS = """
UPDATE task_schedule SET status = 'cancelled', finished_at = now(), lease_until = NULL,
    error = 'cancelled: its task was deleted'
WHERE task_id = $1 AND status = 'scheduled'
"""


CANCELLED_AMONG = """
SELECT b.id FROM unnest($1::bigint[], $2::timestamptz[]) AS b(id, at)
JOIN task_schedule s ON s.id = b.id AND s.scheduled_time = b.at
WHERE s.status = 'cancelled'
"""


async def cancelled_among(conn: Conn, keys: Sequence[tuple[int, datetime]]) -> list[int]:
    """Which of these runs (id, scheduled time) are cancelled now."""
    rows = await conn.fetch(CANCELLED_AMONG, [k[0] for k in keys], [k[1] for k in keys])
    return [r["id"] for r in rows]


async def cancel_run(conn: Conn, run_id: int) -> bool:
    """False when the run has ended or does not exist."""
    return await conn.fetchval(CANCEL_RUN, run_id) is not None


async def cancel_unpublished_runs(conn: Conn, task_id: int) -> None:
    await conn.execute(CANCEL_UNPUBLISHED_RUNS, task_id)


# An operator's retry (POST /runs/{id}/retry): a failed or dead run goes back to the claim as the next attempt of the
# same run, not as a new run. What an operator looks at stays whole: the run they retried ends where its new attempt
# ends, its earlier attempts stay in task_results (keyed by attempt, which goes on counting) and its status changes
# in run_audit (failed -> scheduled, migration 0016); an http task calls again under the same Idempotency-Key; and a
# second click finds the run scheduled and is refused, where a new run per click would run the work twice.
# - Past on purpose (`backfill`, as a backfill's runs are): the claim never takes it for missed, however old its
#   time, and no overlap policy skips it or cancels for it; a concurrency cap holds it as any run (its key is set
#   again when it is handed out, and nothing is counted down here: a failed or dead run is not in flight).
# - It carries on where it stopped: the attempt number and the processors lost go on, so it has the retries it had
#   not spent (none, when it died of spending them: its next failure ends it failed or dead again, for the operator
#   to look at and retry once more) and, like any run, runs whether its task is paused or not (as Run now does).
# - Its last error stays until the new attempt starts (the start clears it); the dead letter of a dead run stays in
#   the dead-letter queue, a record of the death.
# - Refused for a workflow's step and a spawned child, whose outcome their workflow run and parent already counted
#   (`run_flow`), and for a deleted task's run.
RETRY_RUN = """
UPDATE task_schedule s
SET status = 'scheduled', backfill = true, queued_at = NULL, started_at = NULL, finished_at = NULL, worker = NULL,
    lease_until = NULL, concurrency_key = NULL
FROM tasks t
WHERE s.id = $1 AND s.status IN ('failed', 'dead') AND s.workflow_run_id IS NULL AND s.parent_id IS NULL
  AND t.id = s.task_id AND t.deleted_at IS NULL
RETURNING s.id
"""

RUN_STANDING = """
SELECT s.status::text AS status, s.task_id, t.deleted_at IS NOT NULL AS task_deleted, s.workflow_run_id, s.parent_id
FROM task_schedule s JOIN tasks t ON t.id = s.task_id
WHERE s.id = $1
"""


@dataclass(frozen=True, slots=True)
class Retry:
    """What became of a retry, and what decided it."""

    retried: bool
    status: RunState  # the run's, once the retry was decided (scheduled when it was retried)
    task_id: int
    task_deleted: bool
    workflow_run_id: int | None  # the workflow run it is a step of
    parent_id: int | None  # the run that spawned it


async def retry_run(conn: Conn, run_id: int) -> Retry | None:
    """Sends a failed or dead run back to the claim as its next attempt (see RETRY_RUN); None when there is no such
    run. When it was not retried, the result says why."""
    retried = await conn.fetchval(RETRY_RUN, run_id) is not None
    row = await conn.fetchrow(RUN_STANDING, run_id)
    if row is None:
        return None
    return Retry(
        retried, RunState(row["status"]), row["task_id"], row["task_deleted"], row["workflow_run_id"], row["parent_id"]
    )


# Dead runs whose dead letter was not confirmed (the broker refused it or was away, the process died before it was
# sent): it is sent again once the lease ends, the lease moved on first (as for a waiting run).
RESCUE_DEAD_LETTERS = f"""
WITH owed AS (
    SELECT id, scheduled_time FROM task_schedule
    WHERE status = 'dead' AND lease_until < now()
    ORDER BY lease_until LIMIT $1
    FOR UPDATE SKIP LOCKED
), r AS (
    UPDATE task_schedule s SET lease_until = now() + make_interval(secs => $2)
    FROM owed WHERE s.id = owed.id AND s.scheduled_time = owed.scheduled_time
    RETURNING s.id, s.task_id, s.attempt - 1 AS attempt, s.lost, s.scheduled_time, s.lease_until, s.status,
              s.traceparent, s.released_at, s.error
)
SELECT r.id, t.type, r.status, {_MESSAGE} AS body, t.priority, r.traceparent, r.error AS reason
FROM r JOIN tasks t ON t.id = r.task_id
"""

# A dead run's letter is confirmed: nothing more is owed. By id alone (a probe of each day's primary key index): dead
# runs are few.
LETTERS_SENT = "UPDATE task_schedule SET lease_until = NULL WHERE id = ANY($1::bigint[]) AND status = 'dead'"


async def rescue_dead_letters(conn: Conn, limit: int, lease_s: float) -> list[Outbound]:
    """Dead runs whose dead letter is still owed: to be sent (their status dead, each alone to the dead letters)."""
    return _outbound(await conn.fetch(RESCUE_DEAD_LETTERS, limit, lease_s))


# A dead letter refused: owed at once, sent again by the rescuer's next pass (not after a whole lease).
LETTERS_REFUSED = "UPDATE task_schedule SET lease_until = now() WHERE id = ANY($1::bigint[]) AND status = 'dead'"


async def letters_refused(conn: Conn, run_ids: Sequence[int]) -> None:
    """The dead letters of these runs were refused (or not confirmed): the rescuer's next pass sends them."""
    if run_ids:
        await conn.execute(LETTERS_REFUSED, list(run_ids))


async def letters_sent(conn: Conn, run_ids: Sequence[int]) -> None:
    """The dead letters of these runs were confirmed."""
    if run_ids:
        await conn.execute(LETTERS_SENT, list(run_ids))


async def rescue_waiting(conn: Conn, limit: int, lease_s: float) -> list[Outbound]:
    """Queued or retrying runs whose message never started them in time: to be published again."""
    return _outbound(await conn.fetch(RESCUE_WAITING, limit, lease_s))


async def rescue_lost(conn: Conn, limit: int, lease_s: float, lost_limit: int) -> list[Outbound]:
    """Running runs whose processor died: re-queued (dead past `lost_limit` losses), to be published."""
    return _outbound(await conn.fetch(RESCUE_LOST, limit, lease_s, lost_limit))
