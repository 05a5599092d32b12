"""The REST API, built by `create_app(settings)`; the lifespan opens and closes the pool and the broker
(when the transport is RabbitMQ)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, limits
from api.auth import Authenticator
from api.observe import Observe
from api.routes import dashboard, health, me, metrics, pressure, preview, runs, summaries, tasks, workflows
from taskmill.broker import connect
from taskmill.db import role_pool
from taskmill.planning.plan import History
from taskmill.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await role_pool(settings.database_url, max_size=settings.db_pool_size)
        # Over RabbitMQ /health reports the broker too; over PostgreSQL the database is the transport.
        app.state.broker = await connect(settings, "taskmill-api") if settings.transport_name == "amqp" else None
        try:
            yield
        finally:
            if app.state.broker is not None:
                await app.state.broker.close()
            await app.state.pool.close()

    app = FastAPI(title="taskmill", lifespan=lifespan)
    app.state.auth = Authenticator(settings)
    app.state.settings = settings
    app.state.history = History(settings.capacity_history_ttl_s)
    errors.install(app)
    app.add_middleware(limits.BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Observe)  # outermost: it measures what the body limit refuses too
    app.include_router(tasks.router)
    app.include_router(runs.router)
    app.include_router(workflows.router)
    app.include_router(metrics.router)
    app.include_router(summaries.router)
    app.include_router(pressure.router)
    app.include_router(preview.router)
    dashboard.install(app)

    app.include_router(health.router)
    app.include_router(me.router)
    return app
