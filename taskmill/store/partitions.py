"""The days of the partitioned tables (migration 0008): prepared ahead, and dropped once past the retention.

task_schedule and task_results are partitioned by the run's scheduled time, run_audit by the time of the change,
one partition a UTC day (`<table>_pYYYYMMDD`), beside a DEFAULT partition for what no day holds.

- `prepare` makes the partitions of the days ahead. A day whose rows already sit in the default partition (a run
  scheduled beyond the days prepared, a janitor that was down) gets them moved into its own partition.
- `retire` drops each day older than the retention, its results with it. A day still holding runs that have not
  ended (rare: a retry or a stuck run) hands them and their results to the default partition first, so nothing
  that is not over is ever dropped; the janitor's row-by-row purge keeps the default partitions trimmed.

Every janitor runs both; a transaction-level advisory lock makes one do it at a time, and a lock timeout keeps the
partition DDL (which locks the table briefly) from queuing the workers behind a long transaction: what waits too
long is tried again at the next pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# (taskmill.db's alias, not imported: the migration runner, which taskmill.db imports, prepares the days too)
Connection = asyncpg.Connection | PoolConnectionProxy

# table: the column it is partitioned by
TABLES = {"task_schedule": "scheduled_time", "task_results": "scheduled_time", "run_audit": "at"}
# The two tables whose days go together: a run's results live in the partition of its scheduled day.
RUN_TABLES = ("task_results", "task_schedule")
_LOCK_KEY = 0x7A5C_9A27
_LOCK_TIMEOUT = "2s"
_NOT_OVER = "('scheduled', 'queued', 'running', 'retrying', 'blocked', 'waiting')"
# Its upper bound, in pg_get_expr's words: FOR VALUES FROM (...) TO ('2026-11-30 00:00:00+00')
_UPPER = re.compile(r"TO \('([^']+)'\)")


def day_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Partition:
    table: str
    name: str
    upper: datetime | None  # None: the default partition


PARTITIONS = """
SELECT p.relname AS parent, c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = ANY($1::text[]) AND p.relnamespace = current_schema()::regnamespace
"""


async def partitions(conn: Connection) -> list[Partition]:
    found = []
    for r in await conn.fetch(PARTITIONS, list(TABLES)):
        upper = _UPPER.search(r["bound"])
        when = datetime.fromisoformat(upper.group(1)).astimezone(UTC) if upper else None
        found.append(Partition(r["parent"], r["name"], when))
    return found


async def prepare(conn: Connection, today: date, days_ahead: int) -> list[str]:
    """Makes every table's partitions from `today` to `days_ahead` after it; returns those made."""
    made: list[str] = []
    async with conn.transaction():
        if not await _locked(conn):
            return made
        await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        existing = {p.name for p in await partitions(conn)}
        for offset in range(days_ahead + 1):
            day = today + timedelta(days=offset)
            for table, column in TABLES.items():
                name = day_name(table, day)
                if name not in existing:
                    await _make_day(conn, table, column, day)
                    made.append(name)
    return made


async def _locked(conn: Connection) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY))


async def _make_day(conn: Connection, table: str, column: str, day: date) -> None:
    name = day_name(table, day)
    start, end = day_start(day), day_start(day + timedelta(days=1))
    bounds = f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    waiting = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {table}_default WHERE {column} >= $1 AND {column} < $2)", start, end
    )
    if not waiting:
        await conn.execute(f"CREATE TABLE {name} PARTITION OF {table} {bounds}")
        return
    # The day's rows wait in the default partition, which refuses a partition for them while it holds them: out of
    # the table for the moment, the rows moved (straight into the partition, so no trigger sees a change), back in.
    overriding = "OVERRIDING SYSTEM VALUE" if table == "task_schedule" else ""
    await conn.execute(f"ALTER TABLE {table} DETACH PARTITION {table}_default")
    await conn.execute(f"CREATE TABLE {name} PARTITION OF {table} {bounds}")
    await conn.execute(
        f"WITH moved AS (DELETE FROM {table}_default WHERE {column} >= $1 AND {column} < $2 RETURNING *) "
        f"INSERT INTO {name} {overriding} SELECT * FROM moved",
        start,
        end,
    )
    await conn.execute(f"ALTER TABLE {table} ATTACH PARTITION {table}_default DEFAULT")


@dataclass(frozen=True, slots=True)
class Retired:
    dropped: list[str]
    kept_runs: int  # runs not yet over, handed to the default partition


async def retire(conn: Connection, cutoff: datetime) -> Retired:
    """Drops every day (and the partition of all before the first day) whose upper bound is at or before `cutoff`."""
    dropped: list[str] = []
    kept = 0
    async with conn.transaction():
        if not await _locked(conn):
            return Retired(dropped, kept)
        await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        old = [p for p in await partitions(conn) if p.upper is not None and p.upper <= cutoff]
        by_bound: dict[datetime | None, dict[str, str]] = {}
        for p in old:
            by_bound.setdefault(p.upper, {})[p.table] = p.name
        for tables in by_bound.values():
            if "task_schedule" in tables:
                kept += await _hand_over_live_runs(conn, tables["task_schedule"], tables.get("task_results"))
            for table in (*RUN_TABLES, "run_audit"):
                if table in tables:
                    await conn.execute(f"DROP TABLE {tables[table]}")
                    dropped.append(tables[table])
    return Retired(dropped, kept)


async def _hand_over_live_runs(conn: Connection, runs: str, results: str | None) -> int:
    """Moves the runs of an old partition that are not over, and their results, to the default partitions."""
    live = await conn.fetchval(f"SELECT count(*) FROM {runs} WHERE status IN {_NOT_OVER}")
    if not live:
        return 0
    await conn.execute(f"ALTER TABLE task_schedule DETACH PARTITION {runs}")
    await conn.execute(
        f"INSERT INTO task_schedule_default OVERRIDING SYSTEM VALUE SELECT * FROM {runs} WHERE status IN {_NOT_OVER}"
    )
    if results is not None:
        await conn.execute(f"ALTER TABLE task_results DETACH PARTITION {results}")
        await conn.execute(
            f"INSERT INTO task_results_default SELECT r.* FROM {results} r "
            f"WHERE EXISTS (SELECT 1 FROM {runs} s WHERE s.id = r.run_id AND s.status IN {_NOT_OVER})"
        )
    return int(live)
