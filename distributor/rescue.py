"""Runs that fell between the cracks: queued but never started, or running on a processor that died."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import asyncpg

from distributor.handover import hand_over
from distributor.traces import traced
from taskmill.alerts import Alerter
from taskmill.messages import read_runs
from taskmill.metrics import RESCUED
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import (
    Outbound,
    letters_refused,
    letters_sent,
    rescue_dead_letters,
    rescue_lost,
    rescue_waiting,
)
from taskmill.transport import Publisher

log = logging.getLogger(__name__)


async def rescue(
    pool: asyncpg.Pool, publisher: Publisher, settings: Settings, limit: int = 1000, alerter: Alerter | None = None
) -> int:
    """Republishes every run whose lease has run out, and over RabbitMQ first what the PostgreSQL transport left
    (moving up, distributor/handover.py); returns how many runs and messages it handled. A run that lost one
    processor too many is dead: `alerter` counts it and sends its alert."""
    alerter = alerter or Alerter("")
    handled = await hand_over(pool, publisher) if settings.transport_name != "postgres" else 0
    lease_s = settings.queued_lease_s
    finders: dict[str, Callable[[], Awaitable[list[Outbound]]]] = {
        "waiting": partial(rescue_waiting, pool, limit, lease_s),
        "lost": partial(rescue_lost, pool, limit, lease_s, settings.lost_limit),
        "dead letter": partial(rescue_dead_letters, pool, limit, lease_s),  # owed: refused, or never sent
    }
    for kind, find in finders.items():
        while runs := await find():
            # A run that fails to publish keeps its new lease and comes round again when it expires.
            with traced(runs) as outbound:
                confirmed = await publisher.publish_runs(outbound)
            dead = [(r.run_id, ok) for r, ok in zip(runs, confirmed, strict=True) if r.status is RunState.DEAD]
            await letters_sent(pool, [run_id for run_id, ok in dead if ok])
            await letters_refused(pool, [run_id for run_id, ok in dead if not ok])
            if kind == "lost":  # an owed dead letter is of a run counted and alerted when it died
                _alert_dead(alerter, runs)
            handled += len(runs)
            RESCUED.labels(kind).inc(len(runs))
            log.info("rescued %d runs (%s)", len(runs), kind, extra={"action": "rescue"})
            if len(runs) < limit:
                break
    return handled


def _alert_dead(alerter: Alerter, runs: list[Outbound]) -> None:
    for run in runs:
        if run.status is RunState.DEAD:
            message = read_runs(run.body)[0]
            error = f"processor lost on the last attempt ({message.lost + 1} processors lost)"
            alerter.dead(run.run_id, message.task_id, run.type, message.attempt, message.scheduled_time, error)
