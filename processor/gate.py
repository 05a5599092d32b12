"""Holding runs that arrived ahead of their time: one timer per instant, however many runs share it."""

from __future__ import annotations

import asyncio
import time


class DueGate:
    def __init__(self) -> None:
        self._waiting: dict[float, asyncio.Future[None]] = {}

    async def wait(self, due: float) -> None:
        """Returns at `due` (epoch seconds, this host's clock), or at once if it has passed or the gate opened."""
        delay = due - time.time()
        if delay <= 0:
            return
        opened = self._waiting.get(due)
        if opened is None:
            loop = asyncio.get_running_loop()
            opened = self._waiting[due] = loop.create_future()
            loop.call_later(delay, self._open, due)
        await asyncio.shield(opened)

    def _open(self, due: float) -> None:
        opened = self._waiting.pop(due, None)
        if opened is not None and not opened.done():
            opened.set_result(None)

    def open_all(self) -> None:
        """Releases every waiting run at once (on shutdown, so each can be handed back)."""
        for due in list(self._waiting):
            self._open(due)
