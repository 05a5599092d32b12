-- Runs, their results and the audit trail partitioned by day (UTC), so that retention drops a day's partitions
-- instead of deleting rows one by one, and what the hot statements read stays small whatever the history holds.
--
-- task_schedule and task_results by the run's scheduled_time (a run and its results go together); run_audit by
-- the time of the change. Each has a DEFAULT partition for what no day's partition holds (a run scheduled beyond
-- the days prepared ahead); taskmill/store/partitions.py prepares the days (`taskmill migrate`, and the scheduler's
-- janitor every pass), moves a day's rows out of the default partition when it prepares that day, and drops the
-- days older than the retention. The tables as they were become one partition each, of everything before today.

-- 1. The tables as they were, out of the way.
ALTER TABLE task_schedule RENAME TO task_schedule_before;
ALTER TABLE task_results RENAME TO task_results_before;
ALTER TABLE run_audit RENAME TO run_audit_before;
DROP TRIGGER task_schedule_audit_insert ON task_schedule_before;
DROP TRIGGER task_schedule_audit_update ON task_schedule_before;
ALTER TABLE task_results_before DROP CONSTRAINT task_results_run_id_fkey;
ALTER TABLE task_schedule_before ALTER COLUMN id DROP IDENTITY;
-- The keys take the partition's time: the parent's key is built on the table when it is attached.
ALTER TABLE task_schedule_before DROP CONSTRAINT task_schedule_pkey;
ALTER INDEX task_schedule_task_id_scheduled_time_key RENAME TO task_schedule_before_task_id_scheduled_time_key;
ALTER INDEX task_schedule_due RENAME TO task_schedule_before_due;
ALTER INDEX task_schedule_leases RENAME TO task_schedule_before_leases;
ALTER INDEX task_schedule_recent RENAME TO task_schedule_before_recent;
DROP INDEX task_schedule_ended;  -- retention drops days now
ALTER TABLE task_results_before DROP CONSTRAINT task_results_pkey;
DROP INDEX task_results_finished;
ALTER INDEX run_audit_run RENAME TO run_audit_before_run;
DROP INDEX run_audit_at;
-- A result carries its run's scheduled time: the key of the partition it shares with its run.
ALTER TABLE task_results_before ADD COLUMN scheduled_time timestamptz;
UPDATE task_results_before r SET scheduled_time = s.scheduled_time FROM task_schedule_before s WHERE s.id = r.run_id;
DELETE FROM task_results_before WHERE scheduled_time IS NULL;  -- of no run (there is no foreign key to hold them)
ALTER TABLE task_results_before ALTER COLUMN scheduled_time SET NOT NULL;

-- 2. The partitioned tables.
CREATE TABLE task_schedule (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    task_id        bigint NOT NULL CONSTRAINT task_schedule_task_id_fkey REFERENCES tasks (id),
    scheduled_time timestamptz NOT NULL,
    status         run_status NOT NULL DEFAULT 'scheduled',
    attempt        integer NOT NULL DEFAULT 0,
    queued_at      timestamptz,
    started_at     timestamptz,
    finished_at    timestamptz,
    lease_until    timestamptz,
    worker         text,
    error          text,
    created_by     text,
    lost           integer NOT NULL DEFAULT 0 CONSTRAINT task_schedule_lost_check CHECK (lost >= 0),
    CONSTRAINT task_schedule_pkey PRIMARY KEY (id, scheduled_time),
    CONSTRAINT task_schedule_task_id_scheduled_time_key UNIQUE (task_id, scheduled_time)
) PARTITION BY RANGE (scheduled_time);

CREATE INDEX task_schedule_due ON task_schedule (scheduled_time) WHERE status = 'scheduled';
CREATE INDEX task_schedule_leases ON task_schedule (lease_until) WHERE status IN ('queued', 'running', 'retrying');
CREATE INDEX task_schedule_recent ON task_schedule (scheduled_time, id);
CREATE TABLE task_schedule_default PARTITION OF task_schedule DEFAULT;

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
    type           text,
    scheduled_time timestamptz NOT NULL,
    CONSTRAINT task_results_pkey PRIMARY KEY (run_id, scheduled_time, attempt)
) PARTITION BY RANGE (scheduled_time);

CREATE TABLE task_results_default PARTITION OF task_results DEFAULT;

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

-- The view reads results the same way (the lookup of a result's type through its run now has its time too).
CREATE OR REPLACE VIEW average_elapsed_time_per_task_type AS
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

-- 3. What was there: from today on into the new tables (the default partitions, until the days are prepared);
-- before today, the old table becomes the partition of all of that. An empty installation keeps no such partition.
DO $$
DECLARE
    today timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    WITH moved AS (DELETE FROM task_schedule_before WHERE scheduled_time >= today RETURNING *)
    INSERT INTO task_schedule_default OVERRIDING SYSTEM VALUE SELECT * FROM moved;
    WITH moved AS (DELETE FROM task_results_before WHERE scheduled_time >= today RETURNING *)
    INSERT INTO task_results_default SELECT * FROM moved;
    WITH moved AS (DELETE FROM run_audit_before WHERE at >= today RETURNING *)
    INSERT INTO run_audit_default SELECT * FROM moved;
    IF EXISTS (SELECT 1 FROM task_schedule_before) OR EXISTS (SELECT 1 FROM task_results_before) THEN
        EXECUTE format('ALTER TABLE task_schedule ATTACH PARTITION task_schedule_before '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', today);
        EXECUTE format('ALTER TABLE task_results ATTACH PARTITION task_results_before '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', today);
    ELSE
        DROP TABLE task_results_before;
        DROP TABLE task_schedule_before;
    END IF;
    IF EXISTS (SELECT 1 FROM run_audit_before) THEN
        EXECUTE format('ALTER TABLE run_audit ATTACH PARTITION run_audit_before FOR VALUES FROM (MINVALUE) TO (%L)',
                       today);
    ELSE
        DROP TABLE run_audit_before;
    END IF;
    -- Run ids go on from the highest so far.
    PERFORM setval(pg_get_serial_sequence('task_schedule', 'id'), coalesce((SELECT max(id) FROM task_schedule), 0) + 1,
                   false);
END $$;

-- The claim finds each row by its whole key, so that the update reads one partition a row: no hash or merge join,
-- which would read every day's partition whole. PL/pgSQL, so the plan (over every partition) is made once per
-- session, not at every call. No JIT: the plan's cost over a hundred partitions crosses the JIT thresholds, and
-- compiling it took 3 s a claim with 50 million runs of history (the claim itself, 7 ms).
CREATE OR REPLACE FUNCTION claim_due_runs(batch integer, lease_s double precision, lead_s double precision)
RETURNS TABLE (id bigint, type text, status run_status, body text)
LANGUAGE plpgsql SET enable_sort = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    SET jit = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT s.id, s.scheduled_time FROM task_schedule s
        WHERE s.status = 'scheduled' AND s.scheduled_time <= now() + make_interval(secs => lead_s)
          AND (s.lease_until IS NULL OR s.lease_until <= now())
        ORDER BY s.scheduled_time
        LIMIT batch
        FOR UPDATE SKIP LOCKED
    ), r AS (
        UPDATE task_schedule s
        SET status = 'queued', queued_at = now(), lease_until = now() + make_interval(secs => lease_s)
        FROM due WHERE s.id = due.id AND s.scheduled_time = due.scheduled_time
        RETURNING s.id, s.task_id, s.attempt, s.lost, s.scheduled_time, s.lease_until, s.status
    )
    SELECT r.id, t.type, r.status, run_message(r.id, r.task_id, r.attempt, r.lost, r.scheduled_time, r.lease_until, t)
    FROM r JOIN tasks t ON t.id = r.task_id;
END $$;

-- The audit's join of old and new rows must be a hash join whatever its caller says: the claim switches hash joins
-- off for its own statement, whose update fires this trigger, and without one the join is a nested loop, quadratic
-- in the batch.
CREATE OR REPLACE FUNCTION task_schedule_audit_update() RETURNS trigger LANGUAGE plpgsql SET enable_nestloop = off
    SET enable_hashjoin = on SET enable_mergejoin = on AS $$
DECLARE
    bad record;
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
    IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'scheduled') THEN
        PERFORM pg_notify('taskmill_schedule', '');
    END IF;
    RETURN NULL;
END $$;

-- 4. The triggers, on the partitioned table (statement-level, with transition tables, as before).
CREATE TRIGGER task_schedule_audit_insert AFTER INSERT ON task_schedule
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION task_schedule_audit_insert();

CREATE TRIGGER task_schedule_audit_update AFTER UPDATE ON task_schedule
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_schedule_audit_update();

