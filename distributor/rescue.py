"""Runs that fell between the cracks: queued but never started, or running on a processor that died."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import asyncpg

from distributor.handover import hand_over
from taskmill.metrics import RESCUED
from taskmill.settings import Settings
from taskmill.store.runs import Outbound, rescue_lost, rescue_waiting
from taskmill.transport import Publisher

log = logging.getLogger(__name__)


async def rescue(pool: asyncpg.Pool, publisher: Publisher, settings: Settings, limit: int = 1000) -> int:
    """Republishes every run whose lease has run out, and over RabbitMQ first what the PostgreSQL transport left
    (moving up, distributor/handover.py); returns how many runs and messages it handled."""
    handled = await hand_over(pool, publisher) if settings.transport_name != "postgres" else 0
    lease_s = settings.queued_lease_s
    finders: dict[str, Callable[[], Awaitable[list[Outbound]]]] = {
        "waiting": partial(rescue_waiting, pool, limit, lease_s),
        "lost": partial(rescue_lost, pool, limit, lease_s, settings.lost_limit),
    }
    for kind, find in finders.items():
        while runs := await find():
            # A run that fails to publish keeps its new lease and comes round again when it expires.
            await publisher.publish_runs(runs)
            handled += len(runs)
            RESCUED.labels(kind).inc(len(runs))
            log.info("rescued %d runs (%s)", len(runs), kind, extra={"action": "rescue"})
            if len(runs) < limit:
                break
    return handled
