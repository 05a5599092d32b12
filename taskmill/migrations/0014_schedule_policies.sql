-- What happens to each expected run (issue 15): missed runs (misfire), spreading over a window, backfills,
-- overlaps and concurrency caps.
ALTER TABLE tasks
    -- A run that could not start within the grace of its time is missed: `skip` records it skipped, `once` runs the
    -- latest missed one of the task (the others skipped), `all` runs those within the catch-up window, oldest
    -- first (older ones skipped).
    ADD COLUMN misfire text NOT NULL DEFAULT 'once' CHECK (misfire IN ('skip', 'once', 'all')),
    ADD COLUMN misfire_grace_seconds integer NOT NULL DEFAULT 60
        CHECK (misfire_grace_seconds BETWEEN 1 AND 31622400),
    ADD COLUMN catchup_window_seconds integer NOT NULL DEFAULT 86400
        CHECK (catchup_window_seconds BETWEEN 0 AND 31622400),
    -- Each occurrence placed at a fixed point of [t, t + window) chosen from the task and the occurrence.
    ADD COLUMN window_seconds integer NOT NULL DEFAULT 0 CHECK (window_seconds BETWEEN 0 AND 86400);

-- The tasks spread over a window, for the forecast's peak before spreading.
CREATE INDEX tasks_spread ON tasks (id) WHERE window_seconds > 1 AND active AND deleted_at IS NULL;

-- A run made by a backfill: past on purpose, so never missed.
ALTER TABLE task_schedule ADD COLUMN backfill boolean NOT NULL DEFAULT false;

-- Overlaps: what an occurrence does that falls due while the task's previous run is still in flight.
-- `allow` runs it beside; `skip` records it skipped; `queue_one` holds the latest such occurrence until the previous
-- run ends (older ones skipped); `cancel_previous` cancels the previous run (its processor stops it) and runs it.
ALTER TABLE tasks ADD COLUMN overlap text NOT NULL DEFAULT 'allow'
    CHECK (overlap IN ('allow', 'skip', 'queue_one', 'cancel_previous'));

-- A running run can be cancelled (cancel_previous): its processor sees it and stops the attempt.
INSERT INTO run_transitions VALUES ('running', 'cancelled');

-- Limits: `max_concurrency` caps how many runs of a task are in flight at once, across every processor;
-- `concurrency_key` shares one count among several tasks (each held to its own cap). The claim takes a run only
-- while its key's count is under the cap, counting in `concurrency_slots` under a row lock; a run leaving flight
-- (ended, or handed back) counts down in the audit trigger. In flight: queued, running or retrying, so a run between
-- two attempts keeps its place. No coordinator: the count is a row, locked in key order.
ALTER TABLE tasks
    ADD COLUMN max_concurrency integer CHECK (max_concurrency BETWEEN 1 AND 100000),
    ADD COLUMN concurrency_key text CHECK (length(concurrency_key) BETWEEN 1 AND 200);

-- The key a run counts under while in flight (set when it is handed out, kept after).
ALTER TABLE task_schedule ADD COLUMN concurrency_key text;

CREATE TABLE concurrency_slots (
    key  text PRIMARY KEY,
    held integer NOT NULL DEFAULT 0 CHECK (held >= 0)
);

-- The claim, as in 0008, deciding as it takes runs:
-- - missed runs (misfire): a run past its grace is never handed out before its task's policy has had its say. Only
--   runs a schedule made are ever missed: not a workflow's steps (due when their dependencies end), not spawned
--   children, not backfills;
-- - overlaps: the previous run is the task's latest occurrence before this one that was handed out (not skipped,
--   not still scheduled), found backwards on the (task_id, scheduled_time) key and only for tasks whose policy is
--   not `allow`; it is in flight while queued, running or retrying;
-- - concurrency caps: a run whose key is at its cap waits, looked at again in a second, like one held by queue_one.
-- Skipped runs are not returned. `at` is the clock (now() when NULL: a test of an outage sets it).
DROP FUNCTION claim_due_runs(integer, double precision, double precision);

CREATE FUNCTION claim_due_runs(batch integer, lease_s double precision, lead_s double precision, at timestamptz)
RETURNS TABLE (id bigint, type text, status run_status, body text)
LANGUAGE plpgsql SET enable_sort = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    clock timestamptz := coalesce(at, now());
BEGIN
    RETURN QUERY
    WITH due AS (
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
               CASE WHEN NOT due.schedulable
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
    ), decided AS (
        SELECT m.*, p.id AS prev_id, p.scheduled_time AS prev_time,
               CASE WHEN m.missed IS NOT NULL OR p.id IS NULL OR m.overlap = 'allow' THEN NULL
                    WHEN m.overlap = 'skip' THEN 'skip'
                    WHEN m.overlap = 'cancel_previous' THEN 'cancel'
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
              AND p.status NOT IN ('skipped', 'scheduled')
            ORDER BY p.scheduled_time DESC
            LIMIT 1
        ) p ON p.status IN ('queued', 'running', 'retrying')
    ), keyed AS (
        -- Runs about to be handed out whose task has a cap: each key's runs in time order, numbered.
        SELECT d.id, d.ckey, d.max_concurrency,
               row_number() OVER (PARTITION BY d.ckey ORDER BY d.scheduled_time, d.id) AS n
        FROM decided d
        WHERE d.ckey IS NOT NULL AND d.missed IS NULL AND d.overlapping IS NULL
    ), slots AS (
        -- Locked in key order, so two claims never wait on each other in a cycle.
        SELECT c.key, c.held FROM concurrency_slots c
        WHERE c.key IN (SELECT ckey FROM keyed)
        ORDER BY c.key
        FOR UPDATE
    ), fits AS (
        SELECT k.id, k.ckey FROM keyed k JOIN slots c ON c.key = k.ckey WHERE c.held + k.n <= k.max_concurrency
    ), taken AS (
        UPDATE concurrency_slots c SET held = c.held + f.n
        FROM (SELECT ckey, count(*) AS n FROM fits GROUP BY ckey) f
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
        SET status = CASE WHEN d.missed IS NOT NULL OR d.action = 'skip' THEN 'skipped'
                          WHEN d.action = 'hold' THEN 'scheduled' ELSE 'queued' END::run_status,
            queued_at = CASE WHEN d.missed IS NULL AND d.action IS DISTINCT FROM 'skip'
                                  AND d.action IS DISTINCT FROM 'hold' THEN clock END,
            -- held: looked at again in a second
            lease_until = CASE WHEN d.missed IS NOT NULL OR d.action = 'skip' THEN NULL
                               WHEN d.action = 'hold' THEN clock + interval '1 second'
                               ELSE clock + make_interval(secs => lease_s) END,
            finished_at = CASE WHEN d.missed IS NOT NULL OR d.action = 'skip' THEN clock END,
            concurrency_key = CASE WHEN d.missed IS NULL AND d.action IS NULL THEN d.ckey END,
            error = CASE WHEN d.missed IS NOT NULL THEN format(
                             'missed: %s s late, past its grace of %s s (misfire %s: %s)',
                             round(extract(epoch FROM clock - s.scheduled_time)), d.grace, d.misfire,
                             CASE d.missed WHEN 'skip' THEN 'skipped' ELSE d.missed END)
                         WHEN d.action = 'skip' THEN format(
                             'overlap %s: run %s of this task was still %s', d.overlap, d.prev_id,
                             'in flight') END
        FROM final d WHERE s.id = d.id AND s.scheduled_time = d.scheduled_time
        RETURNING s.id, s.task_id, s.attempt, s.lost, s.scheduled_time, s.lease_until, s.status, d.task
    )
    SELECT r.id, (r.task).type, r.status,
           run_message(r.id, r.task_id, r.attempt, r.lost, r.scheduled_time, r.lease_until, r.task)
    FROM r
    WHERE r.status = 'queued';
END $$;

-- The audit trigger, as in 0013, counting down the keys of runs that leave flight.
CREATE OR REPLACE FUNCTION task_schedule_audit_update() RETURNS trigger LANGUAGE plpgsql SET enable_nestloop = off
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
    SELECT coalesce(bool_or(n.status = 'waiting'
                            OR (n.status IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped')
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
