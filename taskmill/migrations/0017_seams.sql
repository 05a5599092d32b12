-- Where features meet (issue 22).

-- Where a task came from. `api`: made by a person or a deployment (POST /tasks, the dashboard, `taskmill apply`,
-- taskmill.client.schedule); `defer`, `submit` and `spawn`: the one-off rows that taskmill.client.defer, the submit
-- queue and a spawning run make for a single run. Those are left out of GET /tasks unless asked for (`origin`), and
-- the janitor deletes them once their run is gone with its day (taskmill/store/retention.py, PURGE_ONE_OFF_TASKS).
ALTER TABLE tasks ADD COLUMN origin text NOT NULL DEFAULT 'api' CHECK (origin IN ('api', 'defer', 'submit', 'spawn'));
UPDATE tasks SET origin = CASE WHEN parent_run_id IS NOT NULL THEN 'spawn'
                               WHEN created_by = 'submit' THEN 'submit' ELSE 'defer' END
WHERE parent_run_id IS NOT NULL OR (name LIKE 'defer:%' AND workflow_id IS NULL);
-- Each secret's keyed digest (taskmill/secrets.py, digests), beside the ciphertext: `taskmill apply` asks whether a
-- file's value is the stored one (POST /tasks/{id}/secrets/compare), so a file that only rotates a secret is applied.
ALTER TABLE tasks ADD COLUMN secret_digests jsonb NOT NULL DEFAULT '{}';
-- The janitor's list: one-off rows by the time of their run (a deferred run's `at`, else when it was made).
CREATE INDEX IF NOT EXISTS tasks_one_off ON tasks ((coalesce(run_at, created_at))) WHERE origin <> 'api';

-- A cancelled run's children are cancelled with it (run_flow below); a spawn that comes after is refused.
ALTER TABLE run_children ADD COLUMN cancelled boolean NOT NULL DEFAULT false;

-- When a run waiting for others (a workflow step, a reduce) was released to the claim: its start lateness counts
-- from here, not from its workflow run's time (the message carries it as `released_at`).
ALTER TABLE task_schedule ADD COLUMN released_at timestamptz;
-- A one-off task's own run, which an edit into a new `once` replaces (not the occurrences an earlier recurring
-- definition owed). Rows made before: every scheduled run of a one-off task, as the edit treated them until now.
ALTER TABLE task_schedule ADD COLUMN one_off boolean NOT NULL DEFAULT false;
UPDATE task_schedule s SET one_off = true FROM tasks t
WHERE t.id = s.task_id AND s.status = 'scheduled' AND t.schedule_kind IN ('once', 'immediate');

-- A dead run whose dead letter is not confirmed yet keeps a lease (taskmill/store/runs.py, RESCUE_DEAD_LETTERS): the
-- rescuer sends it once the lease ends, so a refused or lost letter is sent all the same. A few rows at a time.
-- IF NOT EXISTS: on a large installation build it first, CONCURRENTLY (see 0016).
CREATE INDEX IF NOT EXISTS task_schedule_letters ON task_schedule (lease_until)
    WHERE status = 'dead' AND lease_until IS NOT NULL;

-- The run message, as in 0015, with `released_at` when the run was released by its dependencies.
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

-- The claim, as in 0015, with each run's release time in its message; an occurrence whose later one was handed out
-- first is skipped under an overlap policy, and a cancelled run is not taken for the previous one; the tasks sharing a
-- key are each held to their own cap, and a run that replaces its previous one (cancel_previous) takes its slot.
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

DROP FUNCTION run_message(bigint, bigint, integer, integer, timestamptz, timestamptz, tasks);

-- What follows from runs that changed state, as in 0013, with three changes:
-- - A parent is settled by a statement of its own, after its children's count (run_children) was updated and
--   decided on. That row's lock orders a parent's start of waiting and its children's ends; the statement after it
--   sees what the other committed. (In one statement, a child's end that began before its parent's wait committed
--   found the count `waiting` but the parent's row, by its older snapshot, still `running`: the parent waited for
--   ever. tests/test_flow_races.py forces that interleaving.)
-- - A released run notes when (`released_at`).
-- - The children of a cancelled run that have not ended are cancelled (a running one is stopped by its processor),
--   and theirs in turn, since this update fires the trigger again.
CREATE OR REPLACE FUNCTION run_flow(ids bigint[], times timestamptz[], task_ids bigint[], tos run_status[],
                                    errors text[], wruns bigint[], parents bigint[])
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

-- The audit trigger, as in 0014, calling run_flow for a cancelled run too (its children go with it).
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
