"""The registered handler types (`task_types`): written by processors at start, read by the API."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from taskmill.db import Connection, jsonb
from taskmill.tasktypes import BUILTIN


@dataclass(frozen=True, slots=True)
class Registered:
    name: str
    description: str
    payload_schema: dict[str, Any]
    timeout_seconds: float | None
    module: str


REGISTER = """
INSERT INTO task_types (name, description, payload_schema, timeout_seconds, module, registered_by)
SELECT t.name, t.description, t.payload_schema::jsonb, t.timeout_seconds, t.module, $6
FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[])
    AS t(name, description, payload_schema, timeout_seconds, module)
ON CONFLICT (name) DO UPDATE SET description = excluded.description, payload_schema = excluded.payload_schema,
    timeout_seconds = excluded.timeout_seconds, module = excluded.module, registered_by = excluded.registered_by,
    registered_at = now()
"""


async def register(conn: Connection | asyncpg.Pool, types: Sequence[Registered], worker: str) -> None:
    """Records (or updates) the types a processor serves: the newest registration of a name wins."""
    if types:
        await conn.execute(
            REGISTER,
            [t.name for t in types],
            [t.description for t in types],
            [jsonb(t.payload_schema) for t in types],
            [t.timeout_seconds for t in types],
            [t.module for t in types],
            worker,
        )


async def registry_for(conn: Connection | asyncpg.Pool, types: Iterable[str]) -> dict[str, Registered]:
    """The registered handlers, read only when one of `types` is not built in (which need none of them)."""
    return await registered(conn) if any(t not in BUILTIN for t in types) else {}


async def registered(conn: Connection | asyncpg.Pool) -> dict[str, Registered]:
    rows = await conn.fetch(
        "SELECT name, description, payload_schema, timeout_seconds, module FROM task_types ORDER BY name"
    )
    return {r["name"]: Registered(**dict(r)) for r in rows}
