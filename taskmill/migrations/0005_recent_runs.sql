-- GET /runs: recent runs across all tasks, newest first, keyset on (scheduled_time, id). Without it the listing
-- sorts the whole table (370 ms on 1M runs); with it a page is a short backward index scan (under 1 ms). Filtering
-- by task uses UNIQUE (task_id, scheduled_time); a status filter walks this index (about 20 ms for a status held by
-- 0.1% of 1M runs), so no index on status: each index costs every status change a write.
-- IF NOT EXISTS: on a large installation build it first by hand with CREATE INDEX CONCURRENTLY (same name).
CREATE INDEX IF NOT EXISTS task_schedule_recent ON task_schedule (scheduled_time, id);
