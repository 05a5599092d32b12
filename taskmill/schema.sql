-- The whole schema as the migrations leave it (taskmill/migrations/, applied by `taskmill migrate`), in one place
-- for a reader. It is not applied: tests/test_schema.py checks that the migrations produce exactly this. A change
-- is a new migration and the same change here.

-- The states of a run. taskmill/states.py holds the same values (a test keeps them equal).
CREATE TYPE run_status AS ENUM (
    'scheduled', 'queued', 'running', 'succeeded', 'failed', 'retrying', 'dead', 'cancelled', 'skipped',
    -- A run waiting for the runs it depends on; a run that did its own work and waits for the children it spawned.
    'blocked', 'waiting'
);

CREATE TYPE schedule_kind AS ENUM ('immediate', 'once', 'cron', 'interval');

-- A named set of tasks with `depends_on` edges between them, run as a whole by its schedule or when invoked.
CREATE TABLE workflows (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description        text NOT NULL DEFAULT '',
    -- NULL: run only when invoked.
    schedule_kind      schedule_kind CHECK (schedule_kind IS DISTINCT FROM 'immediate'),
    cron               text,
    every_seconds      integer CHECK (every_seconds > 0),
    run_at             timestamptz,
    timezone           text NOT NULL DEFAULT 'UTC',
    active             boolean NOT NULL DEFAULT true,
    created_by         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- Runs are created from here on (creation, the last edit or re-activation), up to the watermark.
    schedule_from      timestamptz NOT NULL DEFAULT now(),
    materialized_until timestamptz,
    deleted_at         timestamptz,
    CHECK (CASE schedule_kind
        WHEN 'cron' THEN cron IS NOT NULL
        WHEN 'interval' THEN every_seconds IS NOT NULL
        WHEN 'once' THEN run_at IS NOT NULL
        ELSE true END)
);

CREATE UNIQUE INDEX workflows_name_key ON workflows (name) WHERE deleted_at IS NULL;
-- The scheduler's work list, as for tasks.
CREATE INDEX workflows_to_materialize ON workflows (materialized_until NULLS FIRST)
    WHERE active AND deleted_at IS NULL AND schedule_kind IS NOT NULL;

-- Task definitions. A deleted task keeps its row (its runs refer to it) and gives up its name.
CREATE TABLE tasks (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Unique among tasks of their own (tasks_name_key), and within its workflow for a workflow's step.
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    type                text NOT NULL,
    payload             jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    schedule_kind       schedule_kind NOT NULL,
    cron                text,
    every_seconds       integer CHECK (every_seconds > 0),
    run_at              timestamptz,
    timezone            text NOT NULL DEFAULT 'UTC',
    active              boolean NOT NULL DEFAULT true,
    max_retries         integer NOT NULL DEFAULT 0 CHECK (max_retries BETWEEN 0 AND 100),
    retry_delay_seconds double precision NOT NULL DEFAULT 10 CONSTRAINT tasks_retry_delay_seconds_check
                            CHECK (retry_delay_seconds >= 0),
    backoff             double precision NOT NULL DEFAULT 1 CHECK (backoff >= 1),
    timeout_seconds     double precision NOT NULL DEFAULT 30 CONSTRAINT tasks_timeout_seconds_check
                            CHECK (timeout_seconds > 0),
    -- The compute one run needs, for the capacity forecast while its type has no history.
    estimated_ms        integer NOT NULL DEFAULT 1000 CHECK (estimated_ms >= 0),
    -- Fernet ciphertext (TASKMILL_SECRET_KEY) of the task's secrets; their names are in secret_names.
    secrets             bytea,
    created_by          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- Recurring runs are materialized from here on: creation, the last edit or the last re-activation.
    schedule_from       timestamptz NOT NULL DEFAULT now(),
    -- The scheduler's watermark: every run before this instant is in task_schedule.
    materialized_until  timestamptz,
    deleted_at          timestamptz,
    secret_names        text[] NOT NULL DEFAULT '{}',
    -- A workflow's steps are tasks (the pipeline runs them like any other), named within their workflow.
    workflow_id         bigint REFERENCES workflows (id),
    depends_on          text[] NOT NULL DEFAULT '{}',
    -- A step whose failure still lets its dependents run.
    continue_on_failure boolean NOT NULL DEFAULT false,
    -- A spawned child is a task too, named `spawn:<parent run>:<key>`: the key makes a re-run parent's spawns
    -- no-ops.
    parent_run_id       bigint,
    -- 0 for a task of its own; a spawned child's is its parent's plus one (TASKMILL_SPAWN_MAX_DEPTH).
    spawn_depth         integer NOT NULL DEFAULT 0 CHECK (spawn_depth >= 0),
    -- A run that could not start within the grace of its time is missed: `skip` records it skipped, `once` runs the
    -- latest missed one of the task (the others skipped), `all` runs those within the catch-up window, oldest
    -- first (older ones skipped).
    misfire             text NOT NULL DEFAULT 'once' CHECK (misfire IN ('skip', 'once', 'all')),
    misfire_grace_seconds integer NOT NULL DEFAULT 60 CHECK (misfire_grace_seconds BETWEEN 1 AND 31622400),
    catchup_window_seconds integer NOT NULL DEFAULT 86400 CHECK (catchup_window_seconds BETWEEN 0 AND 31622400),
    -- Each occurrence placed at a fixed point of [t, t + window) chosen from the task and the occurrence.
    window_seconds      integer NOT NULL DEFAULT 0 CHECK (window_seconds BETWEEN 0 AND 86400),
    -- An occurrence that falls due while the task's previous run is in flight: `allow` runs it beside, `skip`
    -- records it skipped, `queue_one` holds the latest such occurrence until the previous run ends (older ones
    -- skipped), `cancel_previous` cancels the previous run (its processor stops it) and runs it.
    overlap             text NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip', 'queue_one', 'cancel_previous')),
    -- At most this many runs of the task in flight at once, across every processor; the count is shared by the
    -- tasks of one concurrency_key (each held to its own cap). NULL: no cap.
    max_concurrency     integer CHECK (max_concurrency BETWEEN 1 AND 100000),
    concurrency_key     text CHECK (length(concurrency_key) BETWEEN 1 AND 200),
    -- 0-9, higher first: an urgent run passes a backlog (on RabbitMQ 1-9 share the urgent lane; in run_queue and in
    -- a processor's slots every level counts).
    priority            smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    -- Where it came from: `api` (a person or a deployment: POST /tasks, the dashboard, `taskmill apply`,
    -- taskmill.client.schedule), or the one-off row of a single run that `defer`, the submit queue or a spawning
    -- run made. Those are left out of GET /tasks unless asked for, and purged once their run is (migration 0017).
    origin              text NOT NULL DEFAULT 'api' CHECK (origin IN ('api', 'defer', 'submit', 'spawn')),
    -- Each secret's keyed digest (taskmill/secrets.py): whether a value given is the one stored, without decrypting.
    secret_digests      jsonb NOT NULL DEFAULT '{}',
    CHECK (CASE schedule_kind
        WHEN 'cron' THEN cron IS NOT NULL
        WHEN 'interval' THEN every_seconds IS NOT NULL
        WHEN 'once' THEN run_at IS NOT NULL
        ELSE true END)
);

CREATE UNIQUE INDEX tasks_name_key ON tasks (name) WHERE workflow_id IS NULL;
CREATE UNIQUE INDEX tasks_step_name_key ON tasks (workflow_id, name) WHERE workflow_id IS NOT NULL AND deleted_at IS NULL;
-- The tasks spread over a window (migration 0014), for the forecast's peak before spreading.
CREATE INDEX tasks_spread ON tasks (id) WHERE window_seconds > 1 AND active AND deleted_at IS NULL;
-- The janitor's list of one-off rows, by the time of their run (a deferred run's `at`, else when it was made).
CREATE INDEX tasks_one_off ON tasks ((coalesce(run_at, created_at))) WHERE origin <> 'api';

-- One row per triggering of a workflow: one run per step, all at its scheduled time. `open` counts the steps not
-- ended, `failed` those that failed or died; the last step to end settles the status.
CREATE TABLE workflow_runs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id    bigint NOT NULL REFERENCES workflows (id),
    scheduled_time timestamptz NOT NULL,
    status         text NOT NULL DEFAULT 'running'
                       CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    open           integer NOT NULL CHECK (open >= 0),
    failed         integer NOT NULL DEFAULT 0,
    created_by     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    UNIQUE (workflow_id, scheduled_time)
);

CREATE INDEX workflow_runs_recent ON workflow_runs (workflow_id, id DESC);

-- The scheduler's work list: active recurring tasks whose watermark lags the horizon.
CREATE INDEX tasks_to_materialize ON tasks (materialized_until NULLS FIRST)
    WHERE active AND deleted_at IS NULL AND schedule_kind IN ('cron', 'interval');

-- Runs, their results and the audit trail are partitioned by day (UTC): task_schedule and task_results by the run's
-- scheduled time (a run and its results go together), run_audit by the time of the change. taskmill/store/
-- partitions.py prepares the days ahead (`<table>_pYYYYMMDD`) and drops those past the retention; each table's
-- DEFAULT partition holds what no day does (a run scheduled beyond the prepared days).

-- One row a run: the scheduler inserts recurring runs ahead of time, the API one-off and invoked ones.
CREATE TABLE task_schedule (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    task_id        bigint NOT NULL CONSTRAINT task_schedule_task_id_fkey REFERENCES tasks (id),
    scheduled_time timestamptz NOT NULL,
    status         run_status NOT NULL DEFAULT 'scheduled',
    -- Attempts started so far; a message for attempt n may only start a row whose attempt is n - 1.
    attempt        integer NOT NULL DEFAULT 0,
    queued_at      timestamptz,
    started_at     timestamptz,
    finished_at    timestamptz,
    -- While queued, running or retrying: when the rescuer may hand the run out again. On a scheduled row: a run
    -- the broker refused waits until then before it is claimed again ('infinity': a paused one-off's). On a dead
    -- row: its dead letter is not confirmed yet, and the rescuer sends it then.
    lease_until    timestamptz,
    worker         text,
    error          text,
    created_by     text,
    -- Attempts whose processor was lost: run again elsewhere without spending the task's retries, up to
    -- TASKMILL_LOST_LIMIT.
    lost           integer NOT NULL DEFAULT 0 CONSTRAINT task_schedule_lost_check CHECK (lost >= 0),
    -- The workflow run it is a step of, and the run that spawned it.
    workflow_run_id bigint,
    parent_id      bigint,
    -- While blocked: the runs it depends on that have not ended.
    blockers       integer NOT NULL DEFAULT 0,
    -- Made by a backfill: past on purpose, so never missed.
    backfill       boolean NOT NULL DEFAULT false,
    -- The key it counts under while in flight (its task's cap), set when it is handed out.
    concurrency_key text,
    -- The W3C trace context of the API request that made it, when traces are on (taskmill/tracing.py).
    traceparent    text,
    -- When a run waiting for others (a workflow step, a reduce) was released to the claim: its start lateness counts
    -- from here (the message's `released_at`), not from its workflow run's time.
    released_at    timestamptz,
    -- A one-off task's own run (made with the task, or by an edit into `once`): an edit of the task into a new `once`
    -- replaces it; the occurrences an earlier recurring definition owed stay (taskmill/store/tasks.py).
    one_off        boolean NOT NULL DEFAULT false,
    -- A run's key is its id and its time: the time names its partition.
    CONSTRAINT task_schedule_pkey PRIMARY KEY (id, scheduled_time),
    CONSTRAINT task_schedule_task_id_scheduled_time_key UNIQUE (task_id, scheduled_time)
) PARTITION BY RANGE (scheduled_time);

-- The distributor's claim: due rows in time order.
CREATE INDEX task_schedule_due ON task_schedule (scheduled_time) WHERE status = 'scheduled';
-- The rescuer: in-flight rows whose lease ran out.
CREATE INDEX task_schedule_leases ON task_schedule (lease_until) WHERE status IN ('queued', 'running', 'retrying');
-- GET /runs: recent runs across all tasks, newest first, keyset on (scheduled_time, id).
CREATE INDEX task_schedule_recent ON task_schedule (scheduled_time, id);
CREATE INDEX task_schedule_workflow_run ON task_schedule (workflow_run_id) WHERE workflow_run_id IS NOT NULL;
CREATE INDEX task_schedule_parent ON task_schedule (parent_id) WHERE parent_id IS NOT NULL;
-- The rescuer: dead runs whose dead letter is not confirmed yet (migration 0017).
CREATE INDEX task_schedule_letters ON task_schedule (lease_until) WHERE status = 'dead' AND lease_until IS NOT NULL;
CREATE TABLE task_schedule_default PARTITION OF task_schedule DEFAULT;

-- The edges between runs: `dependent` may start once `upstream` succeeded (or ended, with continue_on_failure).
-- Kept after use: a reduce reads its inputs' results through them.
CREATE TABLE run_links (
    upstream_id         bigint NOT NULL,
    dependent_id        bigint NOT NULL,
    dependent_time      timestamptz NOT NULL,
    continue_on_failure boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upstream_id, dependent_id)
);

CREATE INDEX run_links_dependent ON run_links (dependent_id);
CREATE INDEX run_links_created ON run_links (created_at);

-- A parent's children: how many were spawned and have not ended, the first one's failure, and whether the parent
-- has finished its own work and waits for them. Counted here, not counted again: a child ending as the parent
-- starts to wait can neither be missed nor counted twice (both update this row).
CREATE TABLE run_children (
    parent_id   bigint PRIMARY KEY,
    parent_time timestamptz NOT NULL,
    spawned     integer NOT NULL DEFAULT 0,
    open        integer NOT NULL DEFAULT 0,
    waiting     boolean NOT NULL DEFAULT false,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The parent was cancelled: its children were cancelled with it, and it may spawn no more (migration 0017).
    cancelled   boolean NOT NULL DEFAULT false
);

CREATE INDEX run_children_created ON run_children (created_at);

-- The runs in flight per concurrency key (migration 0014): the claim takes a run only while its key's count is
-- under the cap, under this row's lock; the audit trigger counts down a run that leaves flight.
CREATE TABLE concurrency_slots (
    key  text PRIMARY KEY,
    held integer NOT NULL DEFAULT 0 CHECK (held >= 0)
);



-- One version per attempt of a run: its outcome, result and error, and the type it ran as.
CREATE TABLE task_results (
    run_id         bigint NOT NULL,
    attempt        integer NOT NULL,
    status         run_status NOT NULL,
    started_at     timestamptz,
    finished_at    timestamptz NOT NULL,
    duration_ms    double precision,
    worker         text,
    result         jsonb,
    error          text,
    -- Kept with the result so the per-type statistics read one table, and an attempt stays counted under the type
    -- it ran as when its task is later edited.
    type           text,
    -- The run's: the partition it shares with its run.
    scheduled_time timestamptz NOT NULL,
    CONSTRAINT task_results_pkey PRIMARY KEY (run_id, scheduled_time, attempt)
) PARTITION BY RANGE (scheduled_time);

CREATE TABLE task_results_default PARTITION OF task_results DEFAULT;

-- The compute used in a span of time (migration 0016): results arrive in the order they finish, so a BRIN index
-- finds the last hours' attempts for next to nothing per insert. Small ranges: a day's last range, never full, is
-- never summarized by vacuum, and is read whole.
CREATE INDEX task_results_finished ON task_results USING brin (finished_at)
    WITH (pages_per_range = 16, autosummarize = on);

-- Every status change of every run, written by the database itself (the triggers below). Append-only: no key.
CREATE TABLE run_audit (
    run_id      bigint NOT NULL,
    task_id     bigint NOT NULL,
    from_status run_status,
    to_status   run_status NOT NULL,
    attempt     integer NOT NULL,
    worker      text,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
) PARTITION BY RANGE (at);

CREATE INDEX run_audit_run ON run_audit (run_id);
CREATE TABLE run_audit_default PARTITION OF run_audit DEFAULT;

-- The processors at work: each registers at start, says it is alive every few seconds and leaves when it stops.
-- GET /health lists those seen lately with the isolation their command runs get.
CREATE TABLE processors (
    worker            text PRIMARY KEY,
    started_at        timestamptz NOT NULL DEFAULT now(),
    seen_at           timestamptz NOT NULL DEFAULT now(),
    command_isolation text NOT NULL,
    -- The handler types it serves (taskmill/handlers.py), besides every built-in type.
    handlers          text[] NOT NULL DEFAULT '{}',
    -- The types it is dedicated to (`--types`); NULL: every type. Runs of a dedicated type go to those only.
    types             text[]
);

-- The capacity role's forecast per bucket (migration 0016), written at every plan for the buckets not yet begun: a
-- bucket keeps the last forecast made before it began, set beside the compute used once it is over. Kept two days.
CREATE TABLE capacity_forecasts (
    bucket_start   timestamptz PRIMARY KEY,
    bucket_seconds integer NOT NULL CHECK (bucket_seconds > 0),
    runs           integer NOT NULL,
    required_ms    double precision NOT NULL,
    made_at        timestamptz NOT NULL
);

-- The legal moves of a run. The database refuses any other, whoever writes it.
CREATE TABLE run_transitions (
    from_status run_status NOT NULL,
    to_status   run_status NOT NULL,
    PRIMARY KEY (from_status, to_status)
);

INSERT INTO run_transitions VALUES
    ('scheduled', 'queued'), ('scheduled', 'running'), ('scheduled', 'cancelled'), ('scheduled', 'skipped'),
    ('queued', 'scheduled'), ('queued', 'running'), ('queued', 'cancelled'), ('queued', 'dead'),
    ('running', 'succeeded'), ('running', 'failed'), ('running', 'retrying'), ('running', 'dead'),
    ('running', 'queued'), ('running', 'skipped'),
    ('retrying', 'running'), ('retrying', 'cancelled'), ('retrying', 'dead'),
    ('blocked', 'scheduled'), ('blocked', 'skipped'), ('blocked', 'cancelled'),
    ('running', 'waiting'), ('waiting', 'succeeded'), ('waiting', 'failed'), ('waiting', 'cancelled'),
    ('running', 'cancelled'),
    -- An operator's retry (migration 0016): the run's next attempt, its earlier ones kept.
    ('failed', 'scheduled'), ('dead', 'scheduled');

-- One statement-level trigger per direction: a batch of a thousand moves costs one audit INSERT, not a thousand.
CREATE FUNCTION task_schedule_audit_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_audit (run_id, task_id, from_status, to_status, attempt, worker)
    SELECT id, task_id, NULL, status, attempt, worker FROM new_rows;
    PERFORM pg_notify('taskmill_schedule', '');
    RETURN NULL;
END $$;

-- Transition tables have no statistics: without the hint the planner joins old and new rows in a nested loop,
-- quadratic in the batch size. The hash join is switched on here whatever the caller says (the claim, whose update
-- fires this trigger, switches it off for its own statement).
-- What follows from runs that changed state (one element per run, in the same order in every array): a run that
-- ended releases its dependents (or skips them), counts down its parent's children and its workflow run; a run
-- that started waiting for its children ends at once if they all ended already; a cancelled run cancels the children
-- it spawned that have not ended. Its own updates of task_schedule fire the audit trigger again, so a skip or a
-- cancel goes down the graph and a settled parent up the tree. A parent is settled only after its count
-- (run_children) was updated under that row's lock, by a statement of its own (migration 0017).
-- Joins here touch a few rows by key: nested loops (the audit trigger that calls this switches them off). A run
-- settled here ends at clock_timestamp(): now() is when the transaction began, perhaps before its last child ended.
CREATE FUNCTION run_flow(ids bigint[], times timestamptz[], task_ids bigint[], tos run_status[], errors text[],
                         wruns bigint[], parents bigint[])
RETURNS void LANGUAGE plpgsql SET enable_nestloop = on AS $$
DECLARE
    settle_ids bigint[];
    settle_times timestamptz[];
    settle_errors text[];
BEGIN
    -- Parents that start waiting: settled now if every child ended already (or one failed). Their own rows: this
    -- transaction moved them to waiting.
    WITH e AS (
        SELECT * FROM unnest(ids, times, tos) AS e(id, at, st) WHERE st = 'waiting'
    ), c AS (
        UPDATE run_children c SET waiting = true FROM e WHERE c.parent_id = e.id
        RETURNING c.parent_id, c.open, c.error
    ), settled AS (
        UPDATE task_schedule s
        SET status = CASE WHEN c.error IS NULL THEN 'succeeded' ELSE 'failed' END::run_status,
            error = c.error, finished_at = clock_timestamp()
        FROM e LEFT JOIN c ON c.parent_id = e.id
        WHERE s.id = e.id AND s.scheduled_time = e.at AND s.status = 'waiting'
          AND (c.parent_id IS NULL OR c.open <= 0 OR c.error IS NOT NULL)
        RETURNING s.id, s.scheduled_time, s.attempt, s.status, s.error
    )
    -- The attempt's result row said `waiting`: it now says how the run ended.
    UPDATE task_results r SET status = settled.status, error = coalesce(settled.error, r.error)
    FROM settled
    WHERE r.run_id = settled.id AND r.scheduled_time = settled.scheduled_time AND r.attempt = settled.attempt;

    -- Dependents of the runs that ended: released when none is left, skipped when one did not succeed (unless
    -- the edge continues on failure, which a failed or dead run lets through).
    WITH e AS (
        SELECT e.id, e.st, t.name FROM unnest(ids, task_ids, tos) AS e(id, task_id, st)
        JOIN tasks t ON t.id = e.task_id
        WHERE e.st IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped')
    ), l AS (
        SELECT l.dependent_id, l.dependent_time, count(*) AS n,
               min(format('dependency %s %s', e.name, e.st)) FILTER (
                   WHERE e.st <> 'succeeded' AND NOT (l.continue_on_failure AND e.st IN ('failed', 'dead'))
               ) AS reason
        FROM run_links l JOIN e ON l.upstream_id = e.id
        GROUP BY l.dependent_id, l.dependent_time
    )
    UPDATE task_schedule d
    SET blockers = d.blockers - l.n,
        status = CASE WHEN l.reason IS NOT NULL THEN 'skipped'
                      WHEN d.blockers - l.n <= 0 THEN 'scheduled' ELSE 'blocked' END::run_status,
        error = l.reason,
        finished_at = CASE WHEN l.reason IS NOT NULL THEN clock_timestamp() END,
        released_at = CASE WHEN l.reason IS NULL AND d.blockers - l.n <= 0 THEN clock_timestamp() END,
        lease_until = NULL
    FROM l WHERE d.id = l.dependent_id AND d.scheduled_time = l.dependent_time AND d.status = 'blocked';

    -- Parents of the children that ended: counted down, and decided on under the count's lock...
    WITH k AS (
        SELECT e.parent, count(*) AS n,
               min(format('child run %s %s%s', e.id, e.st, ': ' || left(e.error, 500)))
                   FILTER (WHERE e.st <> 'succeeded') AS error
        FROM unnest(ids, tos, errors, parents) AS e(id, st, error, parent)
        WHERE e.parent IS NOT NULL AND e.st IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped')
        GROUP BY e.parent
    ), c AS (
        UPDATE run_children c SET open = c.open - k.n, error = coalesce(c.error, k.error)
        FROM k WHERE c.parent_id = k.parent
        RETURNING c.parent_id, c.parent_time, c.open, c.error, c.waiting
    )
    SELECT array_agg(c.parent_id), array_agg(c.parent_time), array_agg(c.error)
    INTO settle_ids, settle_times, settle_errors
    FROM c WHERE c.waiting AND (c.open <= 0 OR c.error IS NOT NULL);
    -- ...then settled by a statement that sees what committed meanwhile (a parent's move to waiting).
    IF settle_ids IS NOT NULL THEN
        WITH settled AS (
            UPDATE task_schedule p
            SET status = CASE WHEN c.error IS NULL THEN 'succeeded' ELSE 'failed' END::run_status,
                error = c.error, finished_at = clock_timestamp()
            FROM unnest(settle_ids, settle_times, settle_errors) AS c(id, at, error)
            WHERE p.id = c.id AND p.scheduled_time = c.at AND p.status = 'waiting'
            RETURNING p.id, p.scheduled_time, p.attempt, p.status, p.error
        )
        UPDATE task_results r SET status = settled.status, error = coalesce(settled.error, r.error)
        FROM settled
        WHERE r.run_id = settled.id AND r.scheduled_time = settled.scheduled_time AND r.attempt = settled.attempt;
    END IF;

    -- Workflow runs: counted down; the last step to end settles the status.
    WITH k AS (
        SELECT e.wrun, count(*) AS n, count(*) FILTER (WHERE e.st IN ('failed', 'dead')) AS bad
        FROM unnest(tos, wruns) AS e(st, wrun)
        WHERE e.wrun IS NOT NULL AND e.st IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped')
        GROUP BY e.wrun
    )
    UPDATE workflow_runs w
    SET open = greatest(w.open - k.n, 0), failed = w.failed + k.bad,
        status = CASE WHEN w.status <> 'running' OR w.open - k.n > 0 THEN w.status
                      WHEN w.failed + k.bad > 0 THEN 'failed'
                      -- a step cancelled on its own (POST /runs/{id}/cancel): the workflow did not complete
                      WHEN EXISTS (SELECT 1 FROM task_schedule s WHERE s.workflow_run_id = w.id
                                     AND s.scheduled_time = w.scheduled_time AND s.status = 'cancelled')
                           THEN 'cancelled'
                      ELSE 'succeeded' END,
        finished_at = CASE WHEN w.open - k.n <= 0 THEN coalesce(w.finished_at, clock_timestamp()) END
    FROM k WHERE w.id = k.wrun;

    -- Children of cancelled runs that have not ended: cancelled. First the cancelled runs that ever started (only
    -- those can have spawned, or be spawning now) mark their count `cancelled`: a spawn that counts its children
    -- after this commits is refused (taskmill/spawn.py), and one that counted them before has committed them by the
    -- time this statement has the row's lock, so the next statement sees them. A child is spawned at or after its
    -- parent's time, which lets that scan skip older days' partitions.
    IF 'cancelled' = ANY (tos) THEN
        INSERT INTO run_children (parent_id, parent_time, cancelled)
        SELECT e.id, e.at, true FROM unnest(ids, times, tos) AS e(id, at, st)
        JOIN task_schedule s ON s.id = e.id AND s.scheduled_time = e.at
        WHERE e.st = 'cancelled' AND s.started_at IS NOT NULL
        ON CONFLICT (parent_id) DO UPDATE SET cancelled = true;
        UPDATE task_schedule s
        SET status = 'cancelled', finished_at = clock_timestamp(), lease_until = NULL,
            error = format('cancelled: its parent run %s was cancelled', e.id)
        FROM unnest(ids, times, tos) AS e(id, at, st)
        JOIN run_children c ON c.parent_id = e.id
        WHERE e.st = 'cancelled' AND s.parent_id = e.id AND s.scheduled_time >= e.at
          AND s.status IN ('scheduled', 'blocked', 'queued', 'running', 'retrying', 'waiting');
    END IF;
END $$;

CREATE FUNCTION task_schedule_audit_update() RETURNS trigger LANGUAGE plpgsql SET enable_nestloop = off
    SET enable_hashjoin = on SET enable_mergejoin = on AS $$
DECLARE
    bad record;
    f record;
    flows boolean;
    counted boolean;
    scheduled boolean;
BEGIN
    WITH moved AS (
        INSERT INTO run_audit (run_id, task_id, from_status, to_status, attempt, worker)
        SELECT n.id, n.task_id, o.status, n.status, n.attempt, n.worker
        FROM old_rows o JOIN new_rows n USING (id)
        WHERE o.status <> n.status
        RETURNING run_id, from_status, to_status
    )
    SELECT m.run_id, m.from_status, m.to_status INTO bad
    FROM moved m
    WHERE NOT EXISTS (SELECT 1 FROM run_transitions t
                      WHERE t.from_status = m.from_status AND t.to_status = m.to_status)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'illegal run transition % -> % (run %)', bad.from_status, bad.to_status, bad.run_id
            USING ERRCODE = 'check_violation';
    END IF;
    -- What else the batch asks for, in one pass over the new rows (most batches ask for nothing more).
    SELECT coalesce(bool_or(n.status IN ('waiting', 'cancelled')
                            OR (n.status IN ('succeeded', 'failed', 'dead', 'skipped')
                                AND (n.workflow_run_id IS NOT NULL OR n.parent_id IS NOT NULL))), false),
           coalesce(bool_or(n.concurrency_key IS NOT NULL AND n.status NOT IN ('queued', 'running', 'retrying')), false),
           coalesce(bool_or(n.status = 'scheduled'), false)
    INTO flows, counted, scheduled
    FROM new_rows n;
    IF flows THEN
        SELECT array_agg(n.id) AS ids, array_agg(n.scheduled_time) AS times, array_agg(n.task_id) AS task_ids,
               array_agg(n.status) AS tos, array_agg(n.error) AS errors,
               array_agg(n.workflow_run_id) AS wruns, array_agg(n.parent_id) AS parents
        INTO f
        FROM old_rows o JOIN new_rows n USING (id)
        WHERE o.status <> n.status;
        IF f.ids IS NOT NULL THEN
            PERFORM run_flow(f.ids, f.times, f.task_ids, f.tos, f.errors, f.wruns, f.parents);
        END IF;
    END IF;
    IF counted THEN
        UPDATE concurrency_slots c SET held = greatest(c.held - k.n, 0)
        FROM (SELECT n.concurrency_key AS key, count(*) AS n
              FROM old_rows o JOIN new_rows n USING (id)
              WHERE o.status IN ('queued', 'running', 'retrying') AND n.status NOT IN ('queued', 'running', 'retrying')
                AND n.concurrency_key IS NOT NULL
              GROUP BY 1) k
        WHERE c.key = k.key;
    END IF;
    IF scheduled THEN
        PERFORM pg_notify('taskmill_schedule', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER task_schedule_audit_insert AFTER INSERT ON task_schedule
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION task_schedule_audit_insert();

CREATE TRIGGER task_schedule_audit_update AFTER UPDATE ON task_schedule
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_schedule_audit_update();

-- Any change to a task's definition wakes the schedulers.
CREATE FUNCTION tasks_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskmill_tasks', '');
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_notify AFTER INSERT OR UPDATE OF payload, schedule_kind, cron, every_seconds, run_at,
    timezone, active, deleted_at ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_notify();

-- Every key a task counts under has its row before any of its runs is claimed (the claim locks it).
CREATE FUNCTION tasks_concurrency_slots() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO concurrency_slots (key)
    SELECT DISTINCT coalesce(n.concurrency_key, 'task:' || n.id) FROM new_rows n WHERE n.max_concurrency IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_concurrency_slots_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tasks_concurrency_slots();

CREATE TRIGGER tasks_concurrency_slots_update AFTER UPDATE ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tasks_concurrency_slots();

-- A change to a workflow's schedule wakes the schedulers, as for tasks.
CREATE TRIGGER workflows_notify AFTER INSERT OR UPDATE OF schedule_kind, cron, every_seconds, run_at, timezone,
    active, deleted_at ON workflows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_notify();


-- The run message (taskmill/messages.py, version 1), built here so a claimed row goes to the broker untouched. The
-- keys are the wire format: timeout_s and retry_delay_s as first published. Secrets travel as ciphertext.
CREATE FUNCTION run_message(run_id bigint, task_id bigint, attempt integer, lost integer, scheduled_time timestamptz,
                            deadline timestamptz, t tasks, released timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN released IS NULL THEN m ELSE left(m, -1) || ',"released_at":' || to_json(released)::text || '}' END
    FROM (SELECT json_build_object(
        'v', 1, 'run_id', run_id, 'task_id', task_id, 'type', t.type, 'payload', t.payload,
        'attempt', attempt + 1, 'scheduled_time', scheduled_time, 'timeout_s', t.timeout_seconds,
        'max_retries', t.max_retries, 'retry_delay_s', t.retry_delay_seconds, 'backoff', t.backoff,
        'deadline', deadline, 'secrets', convert_from(t.secrets, 'UTF8'), 'lost', lost, 'priority', t.priority)::text
        AS m) b
$$;

-- The distributor's claim: the oldest runs due within `lead_s`, skipping rows another replica holds, moved to
-- queued, with their messages. Right after a bulk insert the planner's statistics say few rows are due and it would
-- sort every due row to take the first thousand: no sort, no bitmap scan. Each row is then found by its whole key,
-- one partition a row: no hash or merge join, which would read every day's partition whole. PL/pgSQL, so the plan
-- (over every partition) is made once per session, not at every call. No JIT: that plan's cost crosses the JIT
-- thresholds, and compiling it took 3 s a claim with 50 million runs of history (the claim itself, 7 ms).
-- Missed runs are decided as they are taken (misfire, migration 0014): a run past its grace is never handed out
-- before its task's policy has had its say; skipped ones are not returned. Only runs a schedule made are ever missed:
-- not a workflow's steps, not spawned children, not backfills. Overlaps too (migration 0014): the previous run is
-- the task's latest occurrence before this one that was handed out and not cancelled, found backwards on (task_id,
-- scheduled_time) only for tasks whose policy is not `allow`; an occurrence whose later one was handed out first is
-- skipped (migration 0017). Concurrency caps (migration 0014): a run whose key is at its cap waits, looked at again in
-- a second; tasks sharing a key are each held to their own cap (migration 0017). `at`: the clock (now() when NULL).
CREATE FUNCTION claim_due_runs(batch integer, lease_s double precision, lead_s double precision, at timestamptz)
RETURNS TABLE (id bigint, type text, status run_status, body text, priority smallint, traceparent text)
LANGUAGE plpgsql SET enable_sort = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    clock timestamptz := coalesce(at, now());
BEGIN
    RETURN QUERY
    WITH RECURSIVE due AS (
        SELECT s.id, s.scheduled_time, s.task_id,
               NOT s.backfill AND s.workflow_run_id IS NULL AND s.parent_id IS NULL AS schedulable
        FROM task_schedule s
        WHERE s.status = 'scheduled' AND s.scheduled_time <= clock + make_interval(secs => lead_s)
          AND (s.lease_until IS NULL OR s.lease_until <= clock)
        ORDER BY s.scheduled_time
        LIMIT batch
        FOR UPDATE SKIP LOCKED
    ), missed AS (
        SELECT due.id, due.scheduled_time, due.task_id, due.schedulable,
               -- A run of a task paused or deleted since it was made (its publish failed, or it came due in the
               -- moment the pause took): a one-off's is held until the task is resumed, a recurring task's is
               -- skipped, a deleted task's cancelled. A workflow's step, a child, a retry or a backfill runs.
               CASE WHEN due.schedulable AND NOT t.active THEN
                        CASE WHEN t.deleted_at IS NOT NULL THEN 'deleted'
                             WHEN t.schedule_kind IN ('once', 'immediate') THEN 'held'
                             ELSE 'paused' END
               END AS stopped,
               CASE WHEN NOT due.schedulable OR NOT t.active
                         OR due.scheduled_time >= clock - make_interval(secs => t.misfire_grace_seconds) THEN NULL
                    WHEN t.misfire = 'skip' THEN 'skip'
                    WHEN t.misfire = 'all' AND due.scheduled_time < clock - make_interval(secs => t.catchup_window_seconds)
                         THEN 'older than the catch-up window'
                    WHEN t.misfire = 'once' AND EXISTS (
                        SELECT 1 FROM task_schedule n
                        WHERE n.task_id = due.task_id AND n.scheduled_time > due.scheduled_time
                          AND n.scheduled_time < clock - make_interval(secs => t.misfire_grace_seconds)
                          AND NOT n.backfill)
                         THEN 'a later missed occurrence runs'
               END AS missed,
               t.misfire, t.misfire_grace_seconds AS grace, t.overlap, t.max_concurrency,
               CASE WHEN t.max_concurrency IS NOT NULL THEN coalesce(t.concurrency_key, 'task:' || t.id) END AS ckey,
               t AS task  -- the whole row, for the message: tasks is joined once
        FROM due JOIN tasks t ON t.id = due.task_id
    ), siblings AS (
        -- Occurrences of one task taken in this same claim: each after the first falls due while the one before it
        -- is (being) handed out, so its policy has its say as if that one were in flight already.
        SELECT m.id, lag(m.id) OVER w AS before_id, lead(m.id) OVER w AS after_id
        FROM missed m
        WHERE m.schedulable AND m.missed IS NULL AND m.stopped IS NULL AND m.overlap <> 'allow'
        WINDOW w AS (PARTITION BY m.task_id ORDER BY m.scheduled_time)
    ), decided AS (
        SELECT m.*, p.id AS prev_id, p.scheduled_time AS prev_time, b.before_id, b.after_id, l.id AS later_id,
               CASE WHEN m.stopped IS NOT NULL THEN m.stopped
                    WHEN m.missed IS NOT NULL OR m.overlap = 'allow' THEN NULL
                    -- a later occurrence was handed out first (this one came back: its publish failed): stale
                    WHEN l.id IS NOT NULL THEN 'skip'
                    -- an earlier occurrence, due, is not in this claim: another claim holds it (its row locked, its
                    -- outcome not visible yet) or its lease does: it goes first, this one is looked at again
                    WHEN e.id IS NOT NULL THEN 'hold'
                    -- a later occurrence in this claim supersedes it
                    WHEN m.overlap = 'cancel_previous' AND b.after_id IS NOT NULL THEN 'skip'
                    WHEN p.id IS NULL AND b.before_id IS NULL THEN NULL
                    WHEN m.overlap = 'skip' THEN 'skip'
                    WHEN m.overlap = 'cancel_previous' THEN CASE WHEN p.id IS NOT NULL THEN 'cancel' END
                    WHEN EXISTS (
                        SELECT 1 FROM task_schedule n
                        WHERE n.task_id = m.task_id AND n.scheduled_time > m.scheduled_time
                          AND n.scheduled_time <= clock AND n.status = 'scheduled')
                         THEN 'skip'
                    ELSE 'hold'
               END AS overlapping
        FROM missed m
        LEFT JOIN LATERAL (
            SELECT p.id, p.scheduled_time, p.status FROM task_schedule p
            WHERE m.schedulable AND m.overlap <> 'allow' AND m.missed IS NULL
              AND p.task_id = m.task_id AND p.scheduled_time < m.scheduled_time
              -- a cancelled run is not in flight, and may never have been handed out: one before it may be
              AND p.status NOT IN ('skipped', 'scheduled', 'cancelled')
            ORDER BY p.scheduled_time DESC
            LIMIT 1
        ) p ON p.status IN ('queued', 'running', 'retrying')
        -- A later occurrence in flight: handed out at most the lead ahead of the clock, so a short range.
        LEFT JOIN LATERAL (
            SELECT l.id FROM task_schedule l
            WHERE m.schedulable AND m.overlap <> 'allow' AND m.missed IS NULL
              AND l.task_id = m.task_id AND l.scheduled_time > m.scheduled_time
              AND l.scheduled_time <= clock + make_interval(secs => lead_s)
              AND l.status IN ('queued', 'running', 'retrying')
            LIMIT 1
        ) l ON true
        LEFT JOIN LATERAL (
            SELECT e.id FROM task_schedule e
            WHERE m.schedulable AND m.overlap <> 'allow' AND m.missed IS NULL AND m.stopped IS NULL
              AND e.task_id = m.task_id AND e.scheduled_time < m.scheduled_time
              AND e.status = 'scheduled' AND NOT e.backfill
              AND e.scheduled_time <= clock + make_interval(secs => lead_s)
              AND NOT EXISTS (SELECT 1 FROM due WHERE due.id = e.id)
            LIMIT 1
        ) e ON true
        LEFT JOIN siblings b ON b.id = m.id
    ), keyed AS (
        -- Runs about to be handed out whose task has a cap: each key's runs in time order, numbered; `mixed` when
        -- the tasks sharing the key have caps of their own that differ.
        SELECT d.id, d.ckey, d.max_concurrency,
               row_number() OVER (PARTITION BY d.ckey ORDER BY d.scheduled_time, d.id) AS n,
               min(d.max_concurrency) OVER (PARTITION BY d.ckey) <> max(d.max_concurrency) OVER (PARTITION BY d.ckey)
                   AS mixed
        FROM decided d
        WHERE d.ckey IS NOT NULL AND d.missed IS NULL AND d.overlapping IS NULL
    ), slots AS (
        -- Locked in key order, so two claims never wait on each other in a cycle.
        SELECT c.key, c.held FROM concurrency_slots c
        WHERE c.key IN (SELECT ckey FROM keyed UNION ALL
                        SELECT d.ckey FROM decided d WHERE d.ckey IS NOT NULL AND d.overlapping = 'cancel')
        ORDER BY c.key
        FOR UPDATE
    ), walk AS (
        -- A key whose tasks' caps differ: its runs in time order, each taken while the runs of the key in flight
        -- and those taken before it leave room under its own task's cap (one held by a smaller cap takes no room).
        SELECT k.ckey, k.n, k.id, c.held < k.max_concurrency AS ok, (c.held < k.max_concurrency)::int AS taken,
               c.held
        FROM keyed k JOIN slots c ON c.key = k.ckey
        WHERE k.mixed AND k.n = 1
        UNION ALL
        SELECT k.ckey, k.n, k.id, w.held + w.taken < k.max_concurrency,
               w.taken + (w.held + w.taken < k.max_concurrency)::int, w.held
        FROM walk w JOIN keyed k ON k.ckey = w.ckey AND k.n = w.n + 1
    ), fits AS (
        -- One cap for the whole key: the first runs in time order that it leaves room for.
        SELECT k.id, k.ckey FROM keyed k JOIN slots c ON c.key = k.ckey
        WHERE NOT k.mixed AND c.held + k.n <= k.max_concurrency
        UNION ALL
        SELECT w.id, w.ckey FROM walk w WHERE w.ok
    ), taken AS (
        -- With the runs that replace their previous one (cancel_previous): each takes the slot that one leaves.
        UPDATE concurrency_slots c SET held = c.held + f.n
        FROM (SELECT ckey, count(*) AS n
              FROM (SELECT ckey FROM fits
                    UNION ALL
                    SELECT d.ckey FROM decided d WHERE d.ckey IS NOT NULL AND d.overlapping = 'cancel') k
              GROUP BY ckey) f
        WHERE c.key = f.ckey
    ), final AS (
        -- Over its cap a run waits, looked at again in a second, like a run held by queue_one.
        SELECT d.*, CASE WHEN d.ckey IS NOT NULL AND d.missed IS NULL AND d.overlapping IS NULL
                              AND NOT EXISTS (SELECT 1 FROM fits f WHERE f.id = d.id) THEN 'hold'
                         ELSE d.overlapping END AS action
        FROM decided d
    ), cancelled AS (
        UPDATE task_schedule p
        SET status = 'cancelled', finished_at = clock, lease_until = NULL,
            error = format('cancelled: the next occurrence (run %s) fell due (overlap cancel_previous)', d.id)
        FROM final d
        WHERE d.action = 'cancel' AND p.id = d.prev_id AND p.scheduled_time = d.prev_time
          AND p.status IN ('queued', 'running', 'retrying')
    ), r AS (
        UPDATE task_schedule s
        SET status = CASE WHEN d.missed IS NOT NULL OR d.action IN ('skip', 'paused') THEN 'skipped'
                          WHEN d.action = 'deleted' THEN 'cancelled'
                          WHEN d.action IN ('hold', 'held') THEN 'scheduled' ELSE 'queued' END::run_status,
            queued_at = CASE WHEN d.missed IS NULL AND (d.action IS NULL OR d.action = 'cancel') THEN clock END,
            -- hold: looked at again in a second; held: until its task is resumed (HOLD_ONE_OFF_RUNS)
            lease_until = CASE WHEN d.missed IS NOT NULL OR d.action IN ('skip', 'paused', 'deleted') THEN NULL
                               WHEN d.action = 'hold' THEN clock + interval '1 second'
                               WHEN d.action = 'held' THEN 'infinity'::timestamptz
                               ELSE clock + make_interval(secs => lease_s) END,
            finished_at = CASE WHEN d.missed IS NOT NULL OR d.action IN ('skip', 'paused', 'deleted') THEN clock END,
            concurrency_key = CASE WHEN d.missed IS NULL AND (d.action IS NULL OR d.action = 'cancel') THEN d.ckey END,
            error = CASE WHEN d.action = 'paused' THEN 'skipped: its task was paused before it was handed out'
                         WHEN d.action = 'deleted' THEN 'cancelled: its task was deleted'
                         WHEN d.missed IS NOT NULL THEN format(
                             'missed: %s s late, past its grace of %s s (misfire %s: %s)',
                             round(extract(epoch FROM clock - s.scheduled_time)), d.grace, d.misfire,
                             CASE d.missed WHEN 'skip' THEN 'skipped' ELSE d.missed END)
                         WHEN d.action = 'skip' AND d.later_id IS NOT NULL THEN format(
                             'overlap %s: run %s of this task, a later occurrence, was handed out first', d.overlap,
                             d.later_id)
                         WHEN d.action = 'skip' AND d.overlap = 'cancel_previous' THEN format(
                             'overlap cancel_previous: superseded by run %s of this task, due in the same claim',
                             d.after_id)
                         WHEN d.action = 'skip' THEN format(
                             'overlap %s: run %s of this task was still %s', d.overlap,
                             coalesce(d.prev_id, d.before_id), 'in flight') END
        FROM final d WHERE s.id = d.id AND s.scheduled_time = d.scheduled_time
        RETURNING s.id, s.task_id, s.attempt, s.lost, s.scheduled_time, s.lease_until, s.status, d.task,
                  s.traceparent, s.released_at
    )
    SELECT r.id, (r.task).type, r.status,
           run_message(r.id, r.task_id, r.attempt, r.lost, r.scheduled_time, r.lease_until, r.task, r.released_at), (r.task).priority,
           r.traceparent
    FROM r
    WHERE r.status = 'queued';
END $$;

-- Capacity planning (seed 004): how long each task type takes, from the attempts that finished in the past year.
-- Every attempt counts, failed ones too: they used the compute the forecast is about. An attempt lost with its
-- processor has no duration and is left out. Results recorded without a type are looked up through their run.
CREATE VIEW average_elapsed_time_per_task_type AS
SELECT coalesce(r.type, (SELECT t.type FROM task_schedule s JOIN tasks t ON t.id = s.task_id
                         WHERE s.id = r.run_id AND s.scheduled_time = r.scheduled_time)) AS type,
       count(*) AS runs,
       count(*) FILTER (WHERE r.status <> 'succeeded') AS failures,
       avg(r.duration_ms)::float8 AS mean_ms,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY r.duration_ms)::float8 AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY r.duration_ms)::float8 AS p95_ms
FROM task_results r
WHERE r.finished_at > now() - interval '1 year' AND r.duration_ms IS NOT NULL
GROUP BY 1;

-- The PostgreSQL transport (TASKMILL_TRANSPORT=postgres): the queue a broker would hold, as rows. A message is
-- one row: the run message as the broker would carry it (version 1 or 2 JSON), its routing key (the task type), and
-- when it may be handed out. Handing it out sets `available_at` to the end of the lease (a visibility timeout):
-- a message whose processor died is handed out again when its lease runs out, with no other column to look at.
-- Acked: deleted. A retry: inserted with `available_at` its delay ahead. Dead: `queue` = 'dead', with the reason.
CREATE TABLE run_queue (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text NOT NULL DEFAULT 'work' CHECK (queue IN ('work', 'dead')),
    type         text NOT NULL,
    body         bytea NOT NULL,
    run_id       bigint,
    available_at timestamptz NOT NULL DEFAULT now(),
    leased_by    text,
    deliveries   integer NOT NULL DEFAULT 0,
    reason       text,
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    priority     smallint NOT NULL DEFAULT 0
) WITH (
    -- Every message is inserted and deleted within seconds: vacuum it often, or dead rows and their index entries
    -- pile up under a steady load and the claim walks over them.
    autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0
);

-- The claim: the most urgent available work first, then the oldest (dead letters stay out of it).
CREATE INDEX run_queue_available ON run_queue (priority DESC, available_at, id) WHERE queue = 'work';

-- Python handlers (taskmill/handlers.py): each processor registers the task types it serves at start, with their
-- payload JSON schemas, so the API validates payloads and lists types without importing anyone's code.
CREATE TABLE task_types (
    name            text PRIMARY KEY,
    description     text NOT NULL DEFAULT '',
    payload_schema  jsonb NOT NULL CHECK (jsonb_typeof(payload_schema) = 'object'),
    -- The default timeout of a task of this type (the handler's `timeout_seconds`); NULL: the API's default.
    timeout_seconds double precision CHECK (timeout_seconds > 0),
    -- The module that defines it, and the processor that registered it last, and when.
    module          text NOT NULL DEFAULT '',
    registered_by   text NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now()
);
