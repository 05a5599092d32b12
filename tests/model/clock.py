"""A clock the model-based test moves by hand: `now()` in a test database, for every statement the roles send.

The roles read time from the database (`now()` in the claim, the start, the finish, the leases, the pause and the edit;
`db_now` in Python). A schema `taskmill_clock` holds a `now()` of its own that answers a one-row table, and a
database whose search_path names that schema before `pg_catalog` calls it in place of the real one, on every
connection opened after `install` (the roles' own pools included, unchanged). Column defaults
were bound to `pg_catalog.now()` when the tables were made: those the schedule is computed from (a task's
`schedule_from`, `created_at`, `updated_at`) are pointed at the clock too. `clock_timestamp()` (audit ordering, a
workflow's settling) stays real: nothing decides what is due by it.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

SEARCH_PATH = "taskmill_clock, pg_catalog, public"

INSTALL = """
CREATE SCHEMA taskmill_clock;
CREATE TABLE taskmill_clock.clock (at timestamptz NOT NULL);
INSERT INTO taskmill_clock.clock VALUES (pg_catalog.now());
CREATE FUNCTION taskmill_clock.now() RETURNS timestamptz LANGUAGE sql STABLE
    AS 'SELECT at FROM taskmill_clock.clock';
ALTER TABLE public.tasks ALTER COLUMN schedule_from SET DEFAULT taskmill_clock.now(),
    ALTER COLUMN created_at SET DEFAULT taskmill_clock.now(), ALTER COLUMN updated_at SET DEFAULT taskmill_clock.now();
"""


async def install(conn: asyncpg.Connection, at: datetime) -> None:
    """Puts the clock into the connection's database, reading `at`, for the connections opened from now on."""
    await conn.execute(INSTALL)
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'ALTER DATABASE "{database}" SET search_path = {SEARCH_PATH}')
    await set_time(conn, at)


async def set_time(conn: asyncpg.Connection | asyncpg.Pool, at: datetime) -> None:
    await conn.execute("UPDATE taskmill_clock.clock SET at = $1", at)
