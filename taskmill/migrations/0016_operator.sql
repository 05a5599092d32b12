-- The operator's dashboard (issue 16): retrying a run, and the capacity forecast kept to be compared with what ran.

-- An operator's retry (POST /runs/{id}/retry): a failed or dead run goes back to the claim as the next attempt of
-- the same run, its earlier attempts' results and status changes kept (taskmill/store/runs.py, RETRY_RUN).
INSERT INTO run_transitions VALUES ('failed', 'scheduled'), ('dead', 'scheduled');

-- The capacity role's forecast per bucket, written at every plan for the buckets that have not begun: a bucket
-- keeps the last forecast made before it began, to be set beside the compute its attempts used once it is over
-- (GET /scheduled-tasks-summary, `past`). Kept two days (the summary looks back as far as it looks ahead: 48 hours).
CREATE TABLE capacity_forecasts (
    bucket_start   timestamptz PRIMARY KEY,
    bucket_seconds integer NOT NULL CHECK (bucket_seconds > 0),
    runs           integer NOT NULL,
    required_ms    double precision NOT NULL,
    made_at        timestamptz NOT NULL
);

-- The compute used in a span of time: the attempts that finished in it. Results arrive in the order they finish, so
-- a BRIN index (a few pages, next to nothing per insert) finds the last hours without reading a day's partition.
-- Small ranges, summarized as soon as they fill: a day's last range, never full, is never summarized by vacuum and
-- is read whole (up to 128 pages a day by default, 16 here). With 419,250 results in 30 days' partitions, the last
-- three hours' compute per minute took 3.8 ms (511 buffers); with the default ranges, 28 ms.
-- IF NOT EXISTS: on a large installation build it first by hand, a partition at a time with CREATE INDEX
-- CONCURRENTLY then attached to an index ON ONLY task_results (same name), as PostgreSQL's manual describes.
CREATE INDEX IF NOT EXISTS task_results_finished ON task_results USING brin (finished_at)
    WITH (pages_per_range = 16, autosummarize = on);
