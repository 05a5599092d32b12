-- A command task's `run_if` condition can say no once the run has started (taskmill/tasktypes/command.py): the run
-- then ends skipped, with the reason.
INSERT INTO run_transitions VALUES ('running', 'skipped');
