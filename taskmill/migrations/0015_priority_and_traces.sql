-- Priorities (issue 15): `priority` 0-9 on a task, higher first. The run message carries it, the claim returns it
-- (the publisher routes by it: on RabbitMQ, 1-9 go to the urgent lane), the PostgreSQL transport's queue keeps it and
-- hands out the most urgent ready message first, and a processor gives its next free slot to the most urgent run
-- it holds.
ALTER TABLE tasks ADD COLUMN priority smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9);

ALTER TABLE run_queue ADD COLUMN priority smallint NOT NULL DEFAULT 0;

-- Traces (issue 16): the W3C trace context of the API request that made a run, when traces are on
-- (taskmill/tracing.py). The claim returns it, for the distributor's publish span to be its child.
ALTER TABLE task_schedule ADD COLUMN traceparent text;
DROP INDEX run_queue_available;
-- The claim: the most urgent available work first, then the oldest (dead letters stay out of it).
CREATE INDEX run_queue_available ON run_queue (priority DESC, available_at, id) WHERE queue = 'work';

-- The run message, as in 0014, with the priority.
CREATE OR REPLACE FUNCTION run_message(run_id bigint, task_id bigint, attempt integer, lost integer, scheduled_time timestamptz,
                            deadline timestamptz, t tasks)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'v', 1, 'run_id', run_id, 'task_id', task_id, 'type', t.type, 'payload', t.payload,
        'attempt', attempt + 1, 'scheduled_time', scheduled_time, 'timeout_s', t.timeout_seconds,
        'max_retries', t.max_retries, 'retry_delay_s', t.retry_delay_seconds, 'backoff', t.backoff,
        'deadline', deadline, 'secrets', convert_from(t.secrets, 'UTF8'), 'lost', lost, 'priority', t.priority)::text
$$;

-- The claim, as in 0014, returning each run's priority and trace context too (a new result type: dropped and made again). And the
-- overlap policies now count occurrences of one task taken in the same claim: with nothing in flight, two due at once
-- were both handed out; now the first goes and the later ones are as if it were in flight already (skip: skipped;
-- queue_one: the latest held, the others skipped; cancel_previous: the latest goes, the earlier ones skipped).
DROP FUNCTION claim_due_runs(integer, double precision, double precision, timestamptz);
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
    ), siblings AS (
        -- Occurrences of one task taken in this same claim: each after the first falls due while the one before it
        -- is (being) handed out, so its policy has its say as if that one were in flight already.
        SELECT m.id, lag(m.id) OVER w AS before_id, lead(m.id) OVER w AS after_id
        FROM missed m
        WHERE m.schedulable AND m.missed IS NULL AND m.overlap <> 'allow'
        WINDOW w AS (PARTITION BY m.task_id ORDER BY m.scheduled_time)
    ), decided AS (
        SELECT m.*, p.id AS prev_id, p.scheduled_time AS prev_time, b.before_id, b.after_id,
               CASE WHEN m.missed IS NOT NULL OR m.overlap = 'allow' THEN NULL
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
              AND p.status NOT IN ('skipped', 'scheduled')
            ORDER BY p.scheduled_time DESC
            LIMIT 1
        ) p ON p.status IN ('queued', 'running', 'retrying')
        LEFT JOIN siblings b ON b.id = m.id
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
                         WHEN d.action = 'skip' AND d.overlap = 'cancel_previous' THEN format(
                             'overlap cancel_previous: superseded by run %s of this task, due in the same claim',
                             d.after_id)
                         WHEN d.action = 'skip' THEN format(
                             'overlap %s: run %s of this task was still %s', d.overlap,
                             coalesce(d.prev_id, d.before_id), 'in flight') END
        FROM final d WHERE s.id = d.id AND s.scheduled_time = d.scheduled_time
        RETURNING s.id, s.task_id, s.attempt, s.lost, s.scheduled_time, s.lease_until, s.status, d.task,
                  s.traceparent
    )
    SELECT r.id, (r.task).type, r.status,
           run_message(r.id, r.task_id, r.attempt, r.lost, r.scheduled_time, r.lease_until, r.task), (r.task).priority,
           r.traceparent
    FROM r
    WHERE r.status = 'queued';
END $$;
