"""Runs that fell between the cracks: queued but never started, or running on a processor that died."""

from __future__ import annotations

import logging

import asyncpg

from taskmill.broker import Publisher
from taskmill.metrics import RESCUED
from taskmill.settings import Settings
from taskmill.store.runs import rescue_lost, rescue_waiting

log = logging.getLogger(__name__)


async def rescue(pool: asyncpg.Pool, publisher: Publisher, settings: Settings, limit: int = 1000) -> int:
    """Republishes every run whose lease has run out; returns how many it handled."""
    handled = 0
    for find in (rescue_waiting, rescue_lost):
        while runs := await find(pool, limit, settings.queued_lease_s):
            # A run that fails to publish keeps its new lease and comes round again when it expires.
            await publisher.publish_runs(runs)
            handled += len(runs)
            RESCUED.labels(find.__name__.removeprefix("rescue_")).inc(len(runs))
            log.info("rescued %d runs (%s)", len(runs), find.__name__, extra={"action": "rescue"})
            if len(runs) < limit:
                break
    return handled
