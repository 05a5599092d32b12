-- The processors at work: each registers at start, says it is alive every few seconds and leaves when it stops.
-- GET /health lists those seen lately with the isolation their command runs get, so an operator sees a processor
-- that runs commands unconfined, or refuses them, without reading its log.
CREATE TABLE processors (
    worker            text PRIMARY KEY,
    started_at        timestamptz NOT NULL DEFAULT now(),
    seen_at           timestamptz NOT NULL DEFAULT now(),
    command_isolation text NOT NULL
);
