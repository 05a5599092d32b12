"""Worker processes for plain `def` handlers (taskmill/handlers.py): a handler that blocks runs outside the event
loop, and one that must stop (its timeout, a cancel) is killed, not abandoned in a thread that runs on beside its
retry. `pool` is the processor's side, `child` the worker's, `wire` what they say to each other."""
