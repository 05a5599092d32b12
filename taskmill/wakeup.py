"""LISTEN/NOTIFY as an asyncio event: a role sleeps until its timeout or until the database says something changed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from taskmill.db import is_transient
from taskmill.logs import described

log = logging.getLogger(__name__)

# A database that does not answer (a dead host, a silent network) must not hold the role's loop for long.
_CONNECT_TIMEOUT_S = 10.0


class Wakeup:
    """Listens on one channel over its own connection, reconnecting when that connection drops.

    The connection is tried again at the next `wait` after it was lost (so at the role's own pace); once it is
    back the role is woken at once, since notifications sent meanwhile were missed.
    """

    def __init__(
        self, dsn: str, channel: str, prepare: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
    ) -> None:
        """`prepare`: run on each new connection before it listens (session state that lives as long as it)."""
        self._dsn = dsn
        self._channel = channel
        self._prepare = prepare
        self._event = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Wakeup:
        await self._connect()
        self._event.clear()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    async def _connect(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(self._dsn, timeout=_CONNECT_TIMEOUT_S)
            if self._prepare is not None:
                await self._prepare(conn)
            await conn.add_listener(self._channel, self._notified)
            conn.add_termination_listener(self._lost)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("cannot listen on %s: %s", self._channel, described(exc))
            if conn is not None:
                conn.terminate()
            self._conn = None
            return
        self._conn = conn
        self._event.set()  # what changed while we were not listening is not lost: the role looks again now

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
