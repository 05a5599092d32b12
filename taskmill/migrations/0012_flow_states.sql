-- Two states for workflows and subtasks (migration 0013 uses them; a new enum value cannot be used in the
-- transaction that adds it). `blocked`: a run waiting for the runs it depends on. `waiting`: a run that finished its
-- own work and waits for the children it spawned.
ALTER TYPE run_status ADD VALUE 'blocked';
ALTER TYPE run_status ADD VALUE 'waiting';
