-- Overlaps (issue 15): what an occurrence does that falls due while the task's previous run is still in flight.
-- `allow` runs it beside; `skip` records it skipped; `queue_one` holds the latest such occurrence until the previous
-- run ends (older ones skipped); `cancel_previous` cancels the previous run (its processor stops it) and runs it.
ALTER TABLE tasks ADD COLUMN overlap text NOT NULL DEFAULT 'allow'
    CHECK (overlap IN ('allow', 'skip', 'queue_one', 'cancel_previous'));

-- A running run can be cancelled (cancel_previous): its processor sees it and stops the attempt.
INSERT INTO run_transitions VALUES ('running', 'cancelled');

-- The claim, as in 0014, deciding overlaps too. The previous run is the task's latest occurrence before this one
-- that was handed out (not skipped, not still scheduled), found backwards on the (task_id, scheduled_time) key and
-- only for tasks whose policy is not `allow`; it is in flight while queued, running or retrying.
DROP FUNCTION claim_due_runs(integer, double precision, double precision, timestamptz);

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
               t.misfire, t.misfire_grace_seconds AS grace, t.overlap
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
    ), cancelled AS (
        UPDATE task_schedule p
        SET status = 'cancelled', finished_at = clock, lease_until = NULL,
            error = format('cancelled: the next occurrence (run %s) fell due (overlap cancel_previous)', d.id)
        FROM decided d
        WHERE d.overlapping = 'cancel' AND p.id = d.prev_id AND p.scheduled_time = d.prev_time
          AND p.status IN ('queued', 'running', 'retrying')
    ), r AS (
        UPDATE task_schedule s
        SET status = CASE WHEN d.missed IS NOT NULL OR d.overlapping = 'skip' THEN 'skipped'
                          WHEN d.overlapping = 'hold' THEN 'scheduled' ELSE 'queued' END::run_status,
            queued_at = CASE WHEN d.missed IS NULL AND d.overlapping IS DISTINCT FROM 'skip'
                                  AND d.overlapping IS DISTINCT FROM 'hold' THEN clock END,
            -- held: looked at again in a second
            lease_until = CASE WHEN d.missed IS NOT NULL OR d.overlapping = 'skip' THEN NULL
                               WHEN d.overlapping = 'hold' THEN clock + interval '1 second'
                               ELSE clock + make_interval(secs => lease_s) END,
            finished_at = CASE WHEN d.missed IS NOT NULL OR d.overlapping = 'skip' THEN clock END,
            error = CASE WHEN d.missed IS NOT NULL THEN format(
                             'missed: %s s late, past its grace of %s s (misfire %s: %s)',
                             round(extract(epoch FROM clock - s.scheduled_time)), d.grace, d.misfire,
                             CASE d.missed WHEN 'skip' THEN 'skipped' ELSE d.missed END)
                         WHEN d.overlapping = 'skip' THEN format(
                             'overlap %s: run %s of this task was still %s', d.overlap, d.prev_id,
                             'in flight') END
        FROM decided d WHERE s.id = d.id AND s.scheduled_time = d.scheduled_time
        RETURNING s.id, s.task_id, s.attempt, s.lost, s.scheduled_time, s.lease_until, s.status
    )
    SELECT r.id, t.type, r.status, run_message(r.id, r.task_id, r.attempt, r.lost, r.scheduled_time, r.lease_until, t)
    FROM r JOIN tasks t ON t.id = r.task_id
    WHERE r.status = 'queued';
END $$;
