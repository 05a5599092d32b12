"""The REST API, built by `create_app(settings)`; the lifespan opens and closes the pool and the broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api import errors, limits
from api.auth import Authenticator
from api.routes import dashboard, metrics, preview, runs, summaries, tasks
from capacity.plan import History
from taskmill.broker import connect
from taskmill.db import create_pool
from taskmill.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings.database_url, max_size=settings.db_pool_size)
        app.state.broker = await connect(settings, "taskmill-api")
        try:
            yield
        finally:
            await app.state.broker.close()
            await app.state.pool.close()

    app = FastAPI(title="taskmill", lifespan=lifespan)
    app.state.auth = Authenticator(settings)
    app.state.settings = settings
    app.state.history = History(settings.capacity_history_ttl_s)
    errors.install(app)
    app.add_middleware(limits.BodyLimit, max_bytes=settings.max_body_bytes)
    app.include_router(tasks.router)
    app.include_router(runs.router)
    app.include_router(metrics.router)
    app.include_router(summaries.router)
    app.include_router(preview.router)
    dashboard.install(app)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        checks = {
            "database": await _database_ok(request.app.state.pool),
            "broker": not request.app.state.broker.is_closed and request.app.state.broker.connected.is_set(),
        }
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "down", "checks": checks}, status_code=200 if ok else 503)

    return app


async def _database_ok(pool: asyncpg.Pool) -> bool:
    try:
        return bool(await pool.fetchval("SELECT true", timeout=2))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
