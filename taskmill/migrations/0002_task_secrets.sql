-- Task secrets: the values stay encrypted (Fernet, TASKMILL_SECRET_KEY) in tasks.secrets; their names are shown.
ALTER TABLE tasks ADD COLUMN secret_names text[] NOT NULL DEFAULT '{}';

-- The run message carries the ciphertext, never the values: only a processor holding the key can read them.
CREATE OR REPLACE FUNCTION run_message(run_id bigint, task_id bigint, attempt integer, scheduled_time timestamptz,
                                       deadline timestamptz, t tasks)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'v', 1, 'run_id', run_id, 'task_id', task_id, 'type', t.type, 'payload', t.payload,
        'attempt', attempt + 1, 'scheduled_time', scheduled_time, 'timeout_s', t.timeout_s,
        'max_retries', t.max_retries, 'retry_delay_s', t.retry_delay_s, 'backoff', t.backoff,
        'deadline', deadline, 'secrets', convert_from(t.secrets, 'UTF8'))::text
$$;
