"""`taskmill api`: serves create_app(settings) with uvicorn until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import uvicorn

from api.app import create_app
from taskmill.settings import ConfigError, Settings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the caller owns SIGTERM/SIGINT and stops us through `stop`


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}") from None


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    app = create_app(settings)
    # The socket and the app's lifespan (pool, broker) are opened here, not inside uvicorn, so a port in use or a
    # database that refuses stops the process with one line (taskmill.cli) instead of uvicorn's logged traceback.
    with _listen(settings.api_host, settings.api_port) as listener:
        async with app.router.lifespan_context(app):
            server = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
            serving = asyncio.create_task(server.serve(sockets=[listener]))
            log.info("api ready on %s:%d", settings.api_host, settings.api_port, extra={"action": "ready"})
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            stopped.cancel()
            await serving
