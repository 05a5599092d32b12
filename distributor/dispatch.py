"""Claim due runs, publish them confirmed, hand back the ones the broker did not take."""

from __future__ import annotations

import logging

import asyncpg

from taskmill.broker import Publisher
from taskmill.crash import NO_CRASH, Crash, CrashPoint
from taskmill.store.runs import Outbound, revert_to_scheduled

log = logging.getLogger(__name__)

# How long a run the broker refused waits before it is claimed again.
REVERT_BACKOFF_S = 2.0


async def publish_or_revert(
    pool: asyncpg.Pool,
    publisher: Publisher,
    runs: list[Outbound],
    backoff_s: float = REVERT_BACKOFF_S,
    crash: Crash = NO_CRASH,
) -> None:
    """Publishes runs already marked queued (the claim committed); reverts those the broker refused."""
    crash.at(CrashPoint.AFTER_QUEUED)
    confirmed = await publisher.publish_runs(runs)
    crash.at(CrashPoint.AFTER_PUBLISH)
    failed = [run.run_id for run, ok in zip(runs, confirmed, strict=True) if not ok]
    if failed:
        # If the revert fails too, the rescuer republishes these when their lease runs out.
        await revert_to_scheduled(pool, failed, backoff_s)
        log.warning("reverted %d runs to scheduled after failed publishes", len(failed), extra={"action": "revert"})
