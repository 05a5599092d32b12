-- The PostgreSQL transport (TASKMILL_TRANSPORT=postgres): the queue a broker would hold, as rows. A message is
-- one row: the run message as the broker would carry it (version 1 or 2 JSON), its routing key (the task type), and
-- when it may be handed out. Handing it out sets `available_at` to the end of the lease (a visibility timeout):
-- a message whose processor died is handed out again when its lease runs out, with no other column to look at.
-- Acked: deleted. A retry: inserted with `available_at` its delay ahead. Dead: `queue` = 'dead', with the reason.
CREATE TABLE run_queue (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text NOT NULL DEFAULT 'work' CHECK (queue IN ('work', 'dead')),
    type         text NOT NULL,
    body         bytea NOT NULL,
    run_id       bigint,
    available_at timestamptz NOT NULL DEFAULT now(),
    leased_by    text,
    deliveries   integer NOT NULL DEFAULT 0,
    reason       text,
    enqueued_at  timestamptz NOT NULL DEFAULT now()
) WITH (
    -- Every message is inserted and deleted within seconds: vacuum it often, or dead rows and their index entries
    -- pile up under a steady load and the claim walks over them.
    autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0
);

-- The claim: the oldest available work first (dead letters stay out of it).
CREATE INDEX run_queue_available ON run_queue (available_at, id) WHERE queue = 'work';
