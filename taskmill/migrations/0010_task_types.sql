-- Python handlers (taskmill/handlers.py): each processor registers the task types it serves at start, with their
-- payload JSON schemas, so the API validates payloads and lists types without importing anyone's code.
CREATE TABLE task_types (
    name            text PRIMARY KEY,
    description     text NOT NULL DEFAULT '',
    payload_schema  jsonb NOT NULL CHECK (jsonb_typeof(payload_schema) = 'object'),
    -- The default timeout of a task of this type (the handler's `timeout_seconds`); NULL: the API's default.
    timeout_seconds double precision CHECK (timeout_seconds > 0),
    -- The module that defines it, and the processor that registered it last, and when.
    module          text NOT NULL DEFAULT '',
    registered_by   text NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now()
);

-- The handler types each processor serves (it serves every built-in type besides): GET /health names the registered
-- types no live processor serves, and how many due runs wait for one.
ALTER TABLE processors ADD COLUMN handlers text[] NOT NULL DEFAULT '{}';

-- The task types a processor is dedicated to (`--types`), NULL for one that serves every type: runs of a type that
-- live dedicated processors serve are routed to them only.
ALTER TABLE processors ADD COLUMN types text[];
