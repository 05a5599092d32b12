"""Worker processes for plain `def` handlers (taskmill/handlers.py): a handler that blocks runs outside the event
loop, and one that must stop (its timeout, a cancel) is killed, not abandoned in a thread that runs on beside its
retry. A thread cannot be stopped, and a retry made to wait for one would wait for ever on a stuck one.

`pool` is the processor's side, `forker` the forkserver that forks the workers, `child` a worker's life, `wire`
what they say to each other.

Why a pool of our own: pebble's ProcessPool (available, not installed) starts all its workers at once, kills a
worker's pid but not its process group, has no channel for a handler's log lines as they come, and leaves a busy
worker running when its parent is SIGKILLed; multiprocessing's forkserver re-runs the parent's `__main__` in every
worker, adds a resource-tracker process, and its process bookkeeping is not safe from the thread a blocking
Process.start would need. What is needed here is small: fork on demand, a socket per worker, signals to a process
group, an exit code.
"""
