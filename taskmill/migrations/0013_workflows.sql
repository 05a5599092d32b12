-- Workflows (tasks that depend on one another, run level by level) and subtasks (runs that spawn runs). Every
-- dependency is resolved by the database, in the transaction that records an outcome: the audit trigger hands the
-- runs that ended to run_flow, which releases or skips their dependents, settles their parents and counts down their
-- workflow run. No process coordinates anything, so any role can be replicated or killed.

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

-- A change to a workflow's schedule wakes the schedulers, as for tasks.
CREATE TRIGGER workflows_notify AFTER INSERT OR UPDATE OF schedule_kind, cron, every_seconds, run_at, timezone,
    active, deleted_at ON workflows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_notify();

-- A workflow's steps are tasks of their own (the pipeline runs them like any other), named within their workflow.
-- A spawned child is a task too, named `spawn:<parent run>:<key>`: the key makes a re-run parent's spawns no-ops.
ALTER TABLE tasks
    ADD COLUMN workflow_id bigint REFERENCES workflows (id),
    ADD COLUMN depends_on text[] NOT NULL DEFAULT '{}',
    -- A step whose failure still lets its dependents run.
    ADD COLUMN continue_on_failure boolean NOT NULL DEFAULT false,
    ADD COLUMN parent_run_id bigint,
    -- 0 for a task of its own; a spawned child's is its parent's plus one (TASKMILL_SPAWN_MAX_DEPTH).
    ADD COLUMN spawn_depth integer NOT NULL DEFAULT 0 CHECK (spawn_depth >= 0);
ALTER TABLE tasks DROP CONSTRAINT tasks_name_key;
CREATE UNIQUE INDEX tasks_name_key ON tasks (name) WHERE workflow_id IS NULL;
CREATE UNIQUE INDEX tasks_step_name_key ON tasks (workflow_id, name) WHERE workflow_id IS NOT NULL AND deleted_at IS NULL;

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

ALTER TABLE task_schedule
    ADD COLUMN workflow_run_id bigint,
    -- The run that spawned this one.
    ADD COLUMN parent_id bigint,
    -- While blocked: the runs it depends on that have not ended.
    ADD COLUMN blockers integer NOT NULL DEFAULT 0;

-- IF NOT EXISTS: on a large installation build them first by hand, a partition at a time with CREATE INDEX
-- CONCURRENTLY then attached to an index ON ONLY task_schedule (same names), as PostgreSQL's manual describes.
CREATE INDEX IF NOT EXISTS task_schedule_workflow_run ON task_schedule (workflow_run_id)
    WHERE workflow_run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS task_schedule_parent ON task_schedule (parent_id) WHERE parent_id IS NOT NULL;

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
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX run_children_created ON run_children (created_at);

INSERT INTO run_transitions VALUES
    ('blocked', 'scheduled'), ('blocked', 'skipped'), ('blocked', 'cancelled'),
    ('running', 'waiting'), ('waiting', 'succeeded'), ('waiting', 'failed'), ('waiting', 'cancelled');

-- What follows from runs that changed state (one element per run, in the same order in every array): a run that
-- ended releases its dependents (or skips them), counts down its parent's children and its workflow run; a run
-- that started waiting for its children ends at once if they all ended already. Its own updates of task_schedule
-- fire the audit trigger again, so a skip goes down the graph and a settled parent up the tree.
-- Joins here touch a few rows by key: nested loops (the audit trigger that calls this switches them off). A run
-- settled here ends at clock_timestamp(): now() is when the transaction began, perhaps before its last child ended.
CREATE FUNCTION run_flow(ids bigint[], times timestamptz[], task_ids bigint[], tos run_status[], errors text[],
                         wruns bigint[], parents bigint[])
RETURNS void LANGUAGE plpgsql SET enable_nestloop = on AS $$
BEGIN
    -- Parents that start waiting: settled now if every child ended already (or one failed).
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
        lease_until = NULL
    FROM l WHERE d.id = l.dependent_id AND d.scheduled_time = l.dependent_time AND d.status = 'blocked';

    -- Parents of the children that ended: counted down; settled if waiting and done (or a child failed).
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
    ), settled AS (
        UPDATE task_schedule p
        SET status = CASE WHEN c.error IS NULL THEN 'succeeded' ELSE 'failed' END::run_status,
            error = c.error, finished_at = clock_timestamp()
        FROM c
        WHERE c.waiting AND (c.open <= 0 OR c.error IS NOT NULL)
          AND p.id = c.parent_id AND p.scheduled_time = c.parent_time AND p.status = 'waiting'
        RETURNING p.id, p.scheduled_time, p.attempt, p.status, p.error
    )
    UPDATE task_results r SET status = settled.status, error = coalesce(settled.error, r.error)
    FROM settled
    WHERE r.run_id = settled.id AND r.scheduled_time = settled.scheduled_time AND r.attempt = settled.attempt;

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
                      WHEN w.failed + k.bad > 0 THEN 'failed' ELSE 'succeeded' END,
        finished_at = CASE WHEN w.open - k.n <= 0 THEN coalesce(w.finished_at, clock_timestamp()) END
    FROM k WHERE w.id = k.wrun;
END $$;

-- The audit trigger, as in 0008, handing the runs that matter for workflows and subtasks to run_flow. The test for
-- them reads the new rows only, so runs of their own cost one scan of the batch.
CREATE OR REPLACE FUNCTION task_schedule_audit_update() RETURNS trigger LANGUAGE plpgsql SET enable_nestloop = off
    SET enable_hashjoin = on SET enable_mergejoin = on AS $$
DECLARE
    bad record;
    f record;
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
    IF EXISTS (SELECT 1 FROM new_rows n WHERE n.status = 'waiting'
               OR (n.status IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped')
                   AND (n.workflow_run_id IS NOT NULL OR n.parent_id IS NOT NULL))) THEN
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
    IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'scheduled') THEN
        PERFORM pg_notify('taskmill_schedule', '');
    END IF;
    RETURN NULL;
END $$;
