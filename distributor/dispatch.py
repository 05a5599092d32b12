"""Claim due runs, publish them confirmed, hand back the ones the broker did not take."""

from __future__ import annotations

import logging
import math
import time

import asyncpg

from taskmill.crash import NO_CRASH, Crash, CrashPoint
from taskmill.logs import described
from taskmill.store.runs import Outbound, revert_to_scheduled
from taskmill.transport import Publisher

log = logging.getLogger(__name__)

# How long a run the broker refused waits before it is claimed again.
REVERT_BACKOFF_S = 2.0


class Spread:
    """How many runs go in one message: enough messages that every processor consuming gets some (two each, eight at
    least), and at most `cap` runs in one. The count of processors is asked of the broker every few seconds."""

    def __init__(self, publisher: Publisher, cap: int, refresh_s: float = 5.0) -> None:
        self._publisher = publisher
        self._cap = cap
        self._refresh_s = refresh_s
        self._consumers = 1
        self._asked = -math.inf

    async def per_message(self, runs: int) -> int:
        if self._cap <= 1:
            return 1
        if time.monotonic() - self._asked > self._refresh_s:
            self._asked = time.monotonic()
            try:
                self._consumers = max(1, await self._publisher.consumers())
            except Exception as exc:  # the last count serves until the broker answers again
                log.info("cannot count the processors: %s", described(exc))
        return runs_per_message(runs, self._consumers, self._cap)


def runs_per_message(runs: int, consumers: int, cap: int) -> int:
    """Runs in each message when `runs` are published at once to `consumers` processors."""
    return max(1, min(cap, math.ceil(runs / max(8, 2 * consumers))))


async def publish_or_revert(
    pool: asyncpg.Pool,
    publisher: Publisher,
    runs: list[Outbound],
    backoff_s: float = REVERT_BACKOFF_S,
    crash: Crash = NO_CRASH,
    per_message: int = 1,
) -> None:
    """Publishes runs already marked queued (the claim committed), `per_message` runs of a type to a message;
    reverts those the broker refused."""
    crash.at(CrashPoint.AFTER_QUEUED)
    confirmed = await publisher.publish_runs(runs, per_message)
    crash.at(CrashPoint.AFTER_PUBLISH)
    failed = [run.run_id for run, ok in zip(runs, confirmed, strict=True) if not ok]
    if failed:
        # If the revert fails too, the rescuer republishes these when their lease runs out.
        await revert_to_scheduled(pool, failed, backoff_s)
        log.warning("reverted %d runs to scheduled after failed publishes", len(failed), extra={"action": "revert"})
