"""Per-second tasks against the real scheduler process (issue 22, item 11): it used to expand the rest of the UTC
day of every task in one statement (millions of rows for a few dozen per-second tasks), past the pool's statement
timeout, roll back and start again, for ever. Now it holds a bounded stretch of their runs ahead, in statements of
bounded size: the rows, the dead tuples and the process's memory stay in proportion to what runs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.faults.harness import RoleProcess, Stack

PER_SECOND = 30  # interval tasks every second
PER_SECOND_CRON = 4  # six-field cron tasks firing every second
MINUTELY = 30  # five-field crons every minute
RUNS_AHEAD = 600  # TASKMILL_SCHEDULER_RUNS_AHEAD for this test: ten minutes of a per-second task
WATCH_S = 12.0  # passes watched once the first is done (the stack's scheduler runs one a second)


@dataclass(frozen=True, slots=True)
class Figures:
    rows: int  # live rows of task_schedule
    inserted: int  # rows ever inserted into its partitions (rolled back ones included)
    dead: int  # dead tuples in its partitions
    rss_mb: float
    peak_rss_mb: float

    def __str__(self) -> str:
        return (
            f"rows {self.rows}, inserted {self.inserted}, dead {self.dead}, RSS {self.rss_mb:.0f} MB "
            f"(peak {self.peak_rss_mb:.0f} MB)"
        )


def _memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) of the process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def _figures(db: asyncpg.Connection, scheduler: RoleProcess) -> Figures:
    # The statistics of other backends reach the cumulative view within a second or so of their transactions.
    await db.execute("SELECT pg_stat_clear_snapshot()")
    stats = await db.fetchrow(
        "SELECT coalesce(sum(n_tup_ins), 0)::bigint AS inserted, coalesce(sum(n_dead_tup), 0)::bigint AS dead "
        "FROM pg_stat_user_tables WHERE relname LIKE 'task_schedule%'"
    )
    assert stats is not None
    rss, peak = _memory_mb(scheduler.pid)
    return Figures(await db.fetchval("SELECT count(*) FROM task_schedule"), stats[0], stats[1], rss, peak)


async def _settled(db: asyncpg.Connection) -> bool:
    """Every recurring task materialized more than the near term ahead: the scheduler's first full pass is done."""
    behind: int = await db.fetchval(
        "SELECT count(*) FROM tasks WHERE schedule_kind IN ('cron', 'interval') "
        "AND (materialized_until IS NULL OR materialized_until < now() + interval '3 minutes')"
    )
    return behind == 0


async def test_per_second_tasks_cost_the_scheduler_rows_and_memory_in_proportion_to_what_runs(
    stack: Stack, db: asyncpg.Connection
) -> None:
    [scheduler] = await stack.start(scheduler=1, TASKMILL_SCHEDULER_RUNS_AHEAD=str(RUNS_AHEAD))
    await asyncio.sleep(1)  # a pass or two over no tasks
    before = await _figures(db, scheduler)
    await db.execute(
        "INSERT INTO tasks (name, type, schedule_kind, every_seconds) "
        "SELECT 'every-second-' || i, 'noop', 'interval', 1 FROM generate_series(1, $1) i",
        PER_SECOND,
    )
    await db.execute(
        "INSERT INTO tasks (name, type, schedule_kind, cron) "
        "SELECT 'cron-every-second-' || i, 'noop', 'cron', '* * * * * *' FROM generate_series(1, $1) i",
        PER_SECOND_CRON,
    )
    await db.execute(
        "INSERT INTO tasks (name, type, schedule_kind, cron) "
        "SELECT 'minutely-' || i, 'noop', 'cron', '* * * * *' FROM generate_series(1, $1) i",
        MINUTELY,
    )
    started = time.monotonic()
    deadline = started + 60
    while not await _settled(db) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    settled_after = time.monotonic() - started
    first = await _figures(db, scheduler)
    await asyncio.sleep(WATCH_S)
    after = await _figures(db, scheduler)
    elapsed = time.monotonic() - started
    report = (
        f"before the tasks: {before}\nafter the first pass ({settled_after:.1f} s): {first}\n"
        f"{elapsed:.0f} s after the tasks: {after}\n--- scheduler log:\n{scheduler.output(4000)}"
    )
    print(report)
    assert await _settled(db), f"the first pass did not end within 60 s\n{report}"
    # What is needed: each frequent task's runs ahead, and what fell due meanwhile; the minutely crons' day.
    frequent = PER_SECOND + PER_SECOND_CRON
    needed = frequent * (RUNS_AHEAD + elapsed) + MINUTELY * 1440
    assert after.inserted <= needed, report
    assert after.rows == after.inserted - before.inserted, f"rows were inserted and rolled back or deleted\n{report}"
    # The passes after the first only top up what runs: no re-expansion of what is there (counted in rows: the
    # statistics of the first pass may reach the view later).
    assert after.rows - first.rows <= frequent * (WATCH_S + 5), report
    assert after.dead <= 100, report
    assert after.peak_rss_mb - before.rss_mb <= 40, report
    assert "failed" not in scheduler.output(100_000), report
