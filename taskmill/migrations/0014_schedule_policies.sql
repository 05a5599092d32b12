-- What happens to each expected run (issue 15): missed runs (misfire), spreading over a window, backfills.
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

-- A run made by a backfill: past on purpose, so never missed.
ALTER TABLE task_schedule ADD COLUMN backfill boolean NOT NULL DEFAULT false;

-- The claim, as in 0008, deciding missed runs as it takes them (a run past its grace is never handed out before its
-- task's misfire policy has had its say), at `at` (now() when NULL: the test of an outage sets the clock).
-- Skipped runs are not returned. Only runs a schedule made are ever missed: not a workflow's steps (due when their
-- dependencies end), not spawned children, not backfills.
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
    ), decided AS (
        SELECT due.id, due.scheduled_time,
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
               t.misfire, t.misfire_grace_seconds AS grace
        FROM due JOIN tasks t ON t.id = due.task_id
    ), r AS (
        UPDATE task_schedule s
        SET status = CASE WHEN d.missed IS NULL THEN 'queued' ELSE 'skipped' END::run_status,
            queued_at = CASE WHEN d.missed IS NULL THEN clock END,
            lease_until = CASE WHEN d.missed IS NULL THEN clock + make_interval(secs => lease_s) END,
            finished_at = CASE WHEN d.missed IS NOT NULL THEN clock END,
            error = CASE WHEN d.missed IS NOT NULL THEN format(
                'missed: %s s late, past its grace of %s s (misfire %s: %s)',
                round(extract(epoch FROM clock - s.scheduled_time)), d.grace, d.misfire,
                CASE d.missed WHEN 'skip' THEN 'skipped' ELSE d.missed END) END
        FROM decided d WHERE s.id = d.id AND s.scheduled_time = d.scheduled_time
        RETURNING s.id, s.task_id, s.attempt, s.lost, s.scheduled_time, s.lease_until, s.status
    )
    SELECT r.id, t.type, r.status, run_message(r.id, r.task_id, r.attempt, r.lost, r.scheduled_time, r.lease_until, t)
    FROM r JOIN tasks t ON t.id = r.task_id
    WHERE r.status = 'queued';
END $$;
