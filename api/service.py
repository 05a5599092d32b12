"""`taskmill api`: serves create_app(settings) with uvicorn until stopped."""

from __future__ import annotations

import asyncio

import uvicorn

from api.app import create_app
from taskmill.settings import Settings


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the caller owns signals
    serving = asyncio.create_task(server.serve())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopped.cancel()
    await serving
