"""Emptying the bench database between workloads, with roles at work on it or just gone.

A TRUNCATE takes an exclusive lock on each table in turn, queued behind the statements of the roles at work. A
distributor's claim joins task_schedule and tasks: holding the first while it waits for the second, behind a
TRUNCATE that holds `tasks` and waits for `task_schedule`, it makes a deadlock, which PostgreSQL settles by
cancelling one side. A role tries its statement again (taskmill.db.is_transient); so does `truncate`. Where no
stack should be at work (between the stacks of `scale`), `close_others` first ends the sessions of roles that are
gone but whose backends linger, and the TRUNCATE then waits for no one.
"""

from __future__ import annotations

import asyncio

import asyncpg

RUN_TABLES = "tasks, task_schedule, task_results, run_audit"
_ATTEMPTS = 20


async def truncate(conn: asyncpg.Connection, tables: str = RUN_TABLES) -> None:
    """`TRUNCATE tables RESTART IDENTITY CASCADE`, tried again when it lost a deadlock or waited 10 s for a lock."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '10s'")
                await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
            return
        except (asyncpg.DeadlockDetectedError, asyncpg.LockNotAvailableError):
            if attempt == _ATTEMPTS:
                raise
            await asyncio.sleep(0.1 * attempt)


async def close_others(conn: asyncpg.Connection) -> int:
    """Ends every other session on this connection's database; how many. Only while no stack runs on it."""
    ended: int = await conn.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return ended
