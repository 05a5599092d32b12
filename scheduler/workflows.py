"""Creating the runs of scheduled workflows a few minutes ahead (each a workflow run with a run per step: see
taskmill/store/workflows.py), from many scheduler replicas at once.

Minutes, not the day ahead as for tasks: a workflow run is rows for every step and edge, and an edit to the
workflow then changes every run not yet created. The capacity forecast projects the rest from the schedules.
Replicas split the work with SKIP LOCKED, and a workflow run's (workflow, time) is unique: a run is never made twice.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from functools import partial

import asyncpg

from taskmill.cron import ScheduleError, cron_times, interval_times, zone
from taskmill.metrics import MATERIALIZED
from taskmill.schedules import densest_s, first_runs
from taskmill.settings import Settings
from taskmill.store.workflows import invoke

log = logging.getLogger(__name__)

_AHEAD = timedelta(minutes=2)
_BATCH = 100
# Most workflow runs one transaction creates (a statement each): a long catch-up (a workflow every second, the
# scheduler down for a day) commits as it goes, the rest in the next transactions.
_RUNS = 500

DUE = """
SELECT id, schedule_kind::text AS kind, cron, every_seconds, run_at, timezone, schedule_from, materialized_until
FROM workflows
WHERE active AND deleted_at IS NULL AND schedule_kind IS NOT NULL
  AND (materialized_until IS NULL OR materialized_until < $1)
ORDER BY materialized_until NULLS FIRST
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

ADVANCE = "UPDATE workflows SET materialized_until = $2 WHERE id = $1"


def horizon(now: datetime, settings: Settings) -> datetime:
    """Far enough ahead that a run exists before it is due whatever the scheduler's interval."""
    return now + max(_AHEAD, timedelta(seconds=2 * settings.scheduler_interval_s))


def times_of(row: asyncpg.Record, end: datetime, limit: int) -> tuple[list[datetime], datetime]:
    """The workflow's first `limit` firings from its watermark (or the start of its schedule) up to `end`, and the
    watermark they reach (taskmill.schedules.first_runs)."""
    start = max(row["schedule_from"], row["materialized_until"] or row["schedule_from"])
    if row["kind"] == "cron":
        fire = partial(cron_times, row["cron"], zone(row["timezone"]))
        return first_runs(fire, densest_s(row["cron"], None), start, end, limit)
    if row["kind"] == "interval":
        every = partial(interval_times, row["every_seconds"], row["schedule_from"])
        return first_runs(every, densest_s(None, row["every_seconds"]), start, end, limit)
    # once: its time, if not created yet (a time a little before the definition, within the API's grace, counts)
    at: datetime = row["run_at"]
    return ([at] if row["materialized_until"] is None and at < end else []), end


async def materialize_workflows(pool: asyncpg.Pool, settings: Settings, now: datetime) -> int:
    """Creates every missing workflow run up to the horizon, a batch of workflows and at most `_RUNS` runs per
    transaction; returns them."""
    end = horizon(now, settings)
    created = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(DUE, end, _BATCH)
            if not rows:
                return created
            batch = 0
            budget = _RUNS
            for row in rows:
                if budget <= 0:
                    break  # the rest in the next transaction
                try:
                    times, until = await asyncio.to_thread(times_of, row, end, budget)
                except ScheduleError as exc:
                    log.error("cannot expand the schedule of workflow %s: %s", row["id"], exc)
                    times, until = [], end
                for at in times:
                    if await invoke(conn, row["id"], at, created_by="scheduler") is not None:
                        batch += 1
                budget -= len(times)
                await conn.execute(ADVANCE, row["id"], until)
        MATERIALIZED.inc(batch)
        created += batch
