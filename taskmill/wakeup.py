"""LISTEN/NOTIFY as an asyncio event: a role sleeps until its timeout or until the database says something changed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

log = logging.getLogger(__name__)


class Wakeup:
    """Listens on one channel over its own connection, reconnecting when that connection drops."""

    def __init__(self, dsn: str, channel: str) -> None:
        self._dsn = dsn
        self._channel = channel
        self._event = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Wakeup:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    async def _connect(self) -> None:
        try:
            conn: asyncpg.Connection = await asyncpg.connect(self._dsn)
            await conn.add_listener(self._channel, self._notified)
            conn.add_termination_listener(self._lost)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("cannot listen on %s: %s", self._channel, exc)
            self._conn = None
            return
        self._conn = conn

    def _notified(self, *_: Any) -> None:
        self._event.set()

    def _lost(self, *_: Any) -> None:
        self._conn = None
        self._event.set()  # wake the role so it re-checks the database (and we reconnect)

    async def wait(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds; True when woken by a notification."""
        if self._conn is None or self._conn.is_closed():
            await self._connect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout)):
                await self._event.wait()
        woken = self._event.is_set()
        self._event.clear()
        return woken
