-- Retention (R2): the scheduler's janitor purges, a batch per statement, terminal runs (with their results and
-- audit rows), results and audit rows older than TASKMILL_RETENTION_DAYS (see taskmill/store/retention.py).
-- IF NOT EXISTS: on a large installation build them first by hand with CREATE INDEX CONCURRENTLY (same names),
-- since a plain CREATE INDEX holds off writes to its table while it builds.

-- Terminal runs by the time they finished (their scheduled time if none was recorded). Partial: a run gets its one
-- entry when it ends, so the index costs one write per run and holds nothing the purge never wants.
CREATE INDEX IF NOT EXISTS task_schedule_ended ON task_schedule ((coalesce(finished_at, scheduled_time)))
    WHERE status IN ('succeeded', 'failed', 'dead', 'cancelled', 'skipped');

-- Audit rows by age. `at` only grows, so inserts land on the rightmost leaf: cheap for an append-only table.
CREATE INDEX IF NOT EXISTS run_audit_at ON run_audit (at);
