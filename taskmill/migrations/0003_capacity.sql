-- Capacity planning (seed 004): how long each task type takes, from the attempts that finished in the past year.

-- The type an attempt ran as, kept with its result: the statistics read one table instead of joining every result
-- to its run and task, and an attempt stays counted under the type it ran as when its task is later edited.
-- Results recorded without it (written by hand, or before this column) are looked up through their run.
ALTER TABLE task_results ADD COLUMN type text;

-- Every attempt counts, failed ones too: they used the compute the forecast is about. An attempt lost with its
-- processor has no duration and is left out.
CREATE VIEW average_elapsed_time_per_task_type AS
SELECT coalesce(r.type, (SELECT t.type FROM task_schedule s JOIN tasks t ON t.id = s.task_id WHERE s.id = r.run_id))
           AS type,
       count(*) AS runs,
       count(*) FILTER (WHERE r.status <> 'succeeded') AS failures,
       avg(r.duration_ms)::float8 AS mean_ms,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY r.duration_ms)::float8 AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY r.duration_ms)::float8 AS p95_ms
FROM task_results r
WHERE r.finished_at > now() - interval '1 year' AND r.duration_ms IS NOT NULL
GROUP BY 1;
