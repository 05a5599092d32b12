"""Claim due runs, publish them confirmed, hand back the ones the broker did not take."""

from __future__ import annotations

import logging

import asyncpg

from taskmill.broker import Publisher
from taskmill.store.runs import Outbound, claim_due, revert_to_scheduled

log = logging.getLogger(__name__)


async def dispatch_batch(pool: asyncpg.Pool, publisher: Publisher, limit: int, lease_s: float) -> int:
    """One claim and its publishes; returns how many runs were claimed."""
    runs = await claim_due(pool, limit, lease_s)
    if runs:
        await publish_or_revert(pool, publisher, runs)
    return len(runs)


async def publish_or_revert(pool: asyncpg.Pool, publisher: Publisher, runs: list[Outbound]) -> None:
    confirmed = await publisher.publish_runs(runs)
    failed = [run.run_id for run, ok in zip(runs, confirmed, strict=True) if not ok]
    if failed:
        # If the revert fails too, the rescuer republishes these when their lease runs out.
        await revert_to_scheduled(pool, failed)
        log.warning("reverted %d runs to scheduled after failed publishes", len(failed), extra={"action": "revert"})
