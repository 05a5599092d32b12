"""The janitor: keeps the days of the partitioned tables (R2). Each pass prepares the partitions of the days ahead,
drops the days older than the retention (taskmill/store/partitions.py), then purges what the default partitions
hold past it, a batch at a time (taskmill/store/retention.py).

It runs in every scheduler replica: an advisory lock lets one prepare and drop days at a time, and the purge
statements skip rows another janitor holds, so replicas share the work with no leader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, timedelta

import asyncpg

from taskmill.db import Connection, db_now, is_transient
from taskmill.logs import described
from taskmill.loops import wait_or_stop
from taskmill.settings import Settings
from taskmill.store.partitions import Retired, prepare, retire
from taskmill.store.retention import (
    Purged,
    purge_audit,
    purge_flow,
    purge_one_off_tasks,
    purge_results,
    purge_runs,
)

log = logging.getLogger(__name__)

Step = Callable[[Connection, int, int], Awaitable[Purged]]


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What one pass of the janitor deleted, and in how many statements."""

    runs: int = 0
    results: int = 0
    audit: int = 0
    batches: int = 0
    flow: int = 0
    tasks: int = 0

    def plus(self, purged: Purged) -> PurgeReport:
        return PurgeReport(
            self.runs + purged.runs,
            self.results + purged.results,
            self.audit + purged.audit,
            self.batches + 1,
            self.flow + purged.flow,
            self.tasks + purged.tasks,
        )


async def tend_days(pool: asyncpg.Pool, retention_days: int, days_ahead: int) -> Retired:
    """Prepares the days ahead and drops those past the retention (a day goes once it ended that long ago)."""
    async with pool.acquire() as conn:
        now = await db_now(conn)
        made = await prepare(conn, now.astimezone(UTC).date(), days_ahead)
        retired = await retire(conn, now - timedelta(days=retention_days))
    if made:
        log.info("prepared partitions %s", ", ".join(made), extra={"action": "partitions"})
    if retired.dropped:
        log.info(
            "dropped partitions %s (%d runs not over handed to the default partition)",
            ", ".join(retired.dropped),
            retired.kept_runs,
            extra={"action": "partitions"},
        )
    return retired


async def purge(pool: asyncpg.Pool, days: int, batch: int, stop: asyncio.Event | None = None) -> PurgeReport:
    """Purges everything older than `days`, kind by kind, one batch per statement (each its own transaction),
    until a batch comes back short: then nothing is left that another janitor is not already deleting."""
    done = PurgeReport()
    steps: list[tuple[Step, Callable[[Purged], int]]] = [
        (purge_runs, lambda p: p.runs),  # first: its results and audit rows go with it
        (purge_results, lambda p: p.results),
        (purge_audit, lambda p: p.audit),
        (purge_flow, lambda p: p.flow),
        (purge_one_off_tasks, lambda p: p.tasks),  # last: once their runs are gone
    ]
    for step, counted in steps:
        while stop is None or not stop.is_set():
            async with pool.acquire() as conn:
                purged = await step(conn, days, batch)
            done = done.plus(purged)
            if counted(purged) < batch:
                break
    return done


async def janitor_loop(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event) -> None:
    """A pass every `retention_interval_s` until `stop`; a pass the database's absence cut short is logged and tried
    again next time, any other error raised."""
    while not stop.is_set():
        try:
            await tend_days(pool, settings.retention_days, settings.partition_days_ahead)
            done = await purge(pool, settings.retention_days, settings.retention_batch, stop)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("retention purge failed, will retry: %s", described(exc), extra={"action": "purge"})
        else:
            if done.runs or done.results or done.audit or done.tasks:
                log.info(
                    "purged %d runs, %d results, %d audit rows and %d one-off task rows older than %d days in %d "
                    "batches",
                    done.runs,
                    done.results,
                    done.audit,
                    done.tasks,
                    settings.retention_days,
                    done.batches,
                    extra={"action": "purge"},
                )
        if await wait_or_stop(stop, settings.retention_interval_s):
            return
