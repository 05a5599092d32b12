"""Crash points for the fault tests: `TASKMILL_CRASH_AT=<point>[:<nth>]` makes a role SIGKILL itself the nth time
(default the first) it reaches that point, so a test can prove nothing is lost when a process dies there.

The points of the issue, mapped onto this design (the distributor marks a run queued *before* publishing it, so
there is no commit after the publish; the processor records the outcome, then publishes a retry or dead letter,
then acks):

- `after_queued`: distributor, a claim batch is committed (its runs are queued) and nothing is published yet.
  The rescuer republishes the runs when their queued lease runs out.
- `after_publish`: distributor, the batch is published and confirmed and nothing else is recorded (the revert of
  refused runs has not happened). Also the processor's retry and dead-letter path: `retrying` (or `dead`) is
  recorded and the delayed (or dead) message is confirmed, and the delivery is not acked yet.
- `after_side_effect`: processor, the task has run (its HTTP call made, its command exited) and its outcome is
  not recorded yet. The broker redelivers, the compare-and-set drops the copy (the run is still `running`), and
  the rescuer gives the run to another processor when its lease ends: the one place a side effect repeats.
- `after_record`: processor, the outcome is recorded and nothing is published or acked yet (a retry's delayed
  message is not sent: the retry lease brings the run back through the rescuer).

Only the dispatch path of the distributor crashes, not its rescuer. Unset (the default) a point costs one
identity comparison. Read once into Settings (`crash_at`), never from the environment at import.
"""

from __future__ import annotations

import enum
import os
import signal
import sys


class CrashPoint(enum.StrEnum):
    AFTER_QUEUED = "after_queued"
    AFTER_PUBLISH = "after_publish"
    AFTER_SIDE_EFFECT = "after_side_effect"
    AFTER_RECORD = "after_record"


def parse(spec: str) -> tuple[CrashPoint | None, int]:
    """`<point>[:<nth>]` as (point, nth); ("", 1) is no crash. ValueError names what is wrong."""
    if not spec:
        return None, 1
    name, _, nth = spec.partition(":")
    try:
        point = CrashPoint(name)
    except ValueError:
        raise ValueError(f"unknown crash point {name!r} (one of {', '.join(CrashPoint)})") from None
    if not nth:
        return point, 1
    if not nth.isdigit() or int(nth) < 1:
        raise ValueError(f"the count in {spec!r} must be a whole number from 1")
    return point, int(nth)


def check_spec(spec: str) -> str:
    """A pydantic validator for the setting: the spec unchanged, or a ValueError."""
    parse(spec)
    return spec


class Crash:
    __slots__ = ("_nth", "_point", "_seen")

    def __init__(self, spec: str = "") -> None:
        self._point, self._nth = parse(spec)
        self._seen = 0

    def at(self, point: CrashPoint) -> None:
        """Dies here, by SIGKILL, if this is the configured point reached for the nth time."""
        if point is not self._point:
            return
        self._seen += 1
        if self._seen == self._nth:
            # Said first, so the test can tell this death from any other; then no cleanup of any kind runs.
            sys.stderr.write(f"taskmill: crash point {point.value} reached ({self._nth}), SIGKILL\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


NO_CRASH = Crash()
