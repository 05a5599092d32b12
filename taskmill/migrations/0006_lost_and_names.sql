-- A task's fields carry the names they have in the API and in Python: timeout_seconds, retry_delay_seconds.
ALTER TABLE tasks RENAME COLUMN timeout_s TO timeout_seconds;
ALTER TABLE tasks RENAME COLUMN retry_delay_s TO retry_delay_seconds;
ALTER TABLE tasks RENAME CONSTRAINT tasks_timeout_s_check TO tasks_timeout_seconds_check;
ALTER TABLE tasks RENAME CONSTRAINT tasks_retry_delay_s_check TO tasks_retry_delay_seconds_check;

-- Attempts whose processor was lost (it died, or vanished from the network, mid-run). The rescuer hands such a run
-- to another processor without spending the task's retries; past TASKMILL_LOST_LIMIT losses the run is dead, since
-- it may be what kills its processors.
ALTER TABLE task_schedule ADD COLUMN lost integer NOT NULL DEFAULT 0 CHECK (lost >= 0);

-- The run message gains `lost`, so a processor can tell failed attempts (which spend retries) from lost ones. Its
-- keys are the wire format (version 1): timeout_s and retry_delay_s stay as they were published.
DROP FUNCTION claim_due_runs(integer, double precision, double precision);
DROP FUNCTION run_message(bigint, bigint, integer, timestamptz, timestamptz, tasks);

CREATE FUNCTION run_message(run_id bigint, task_id bigint, attempt integer, lost integer, scheduled_time timestamptz,
                            deadline timestamptz, t tasks)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'v', 1, 'run_id', run_id, 'task_id', task_id, 'type', t.type, 'payload', t.payload,
        'attempt', attempt + 1, 'scheduled_time', scheduled_time, 'timeout_s', t.timeout_seconds,
        'max_retries', t.max_retries, 'retry_delay_s', t.retry_delay_seconds, 'backoff', t.backoff,
        'deadline', deadline, 'secrets', convert_from(t.secrets, 'UTF8'), 'lost', lost)::text
$$;

-- As in 0001_schema.sql, with the message's new argument.
CREATE FUNCTION claim_due_runs(batch integer, lease_s double precision, lead_s double precision)
RETURNS TABLE (id bigint, type text, status run_status, body text)
LANGUAGE sql SET enable_sort = off SET enable_bitmapscan = off AS $$
    WITH due AS (
        SELECT s.id FROM task_schedule s
        WHERE s.status = 'scheduled' AND s.scheduled_time <= now() + make_interval(secs => lead_s)
          AND (s.lease_until IS NULL OR s.lease_until <= now())
        ORDER BY s.scheduled_time
        LIMIT batch
        FOR UPDATE SKIP LOCKED
    ), r AS (
        UPDATE task_schedule s
        SET status = 'queued', queued_at = now(), lease_until = now() + make_interval(secs => lease_s)
        FROM due WHERE s.id = due.id
        RETURNING s.id, s.task_id, s.attempt, s.lost, s.scheduled_time, s.lease_until, s.status
    )
    SELECT r.id, t.type, r.status, run_message(r.id, r.task_id, r.attempt, r.lost, r.scheduled_time, r.lease_until, t)
    FROM r JOIN tasks t ON t.id = r.task_id
$$;
