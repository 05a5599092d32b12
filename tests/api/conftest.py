from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

import api.service
from api.app import create_app
from taskmill.db import connect
from taskmill.settings import Settings
from taskmill.tokens import mint
from tests.conftest import isolated_settings
from tests.helpers import free_port, running, wait_until

SECRET = "test-secret-that-is-long-enough-for-hs256"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"jwt_secret": SECRET})


@pytest.fixture
async def client(api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(api_settings) as c:
        yield c


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API in this process (ASGI, no socket) with its lifespan open: also for module-scoped fixtures."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://taskmill.test") as c:
            yield c


@dataclass
class Api:
    client: httpx.AsyncClient
    db: asyncpg.Connection
    existing: int  # the id of a task made at the start, for the cases that replace one


@asynccontextmanager
async def module_api(template_db: str) -> AsyncIterator[Api]:
    """One API and database for a whole module of cases that only read or are refused: hundreds take seconds."""
    async with (
        isolated_settings(template_db) as settings,
        app_client(settings.model_copy(update={"jwt_secret": SECRET})) as client,
    ):
        db = await connect(settings.database_url)
        created = await client.post("/tasks", json={"name": "existing", "type": "noop"}, headers=bearer())
        assert created.status_code == 201, created.text
        try:
            yield Api(client, db, created.json()["id"])
        finally:
            await db.close()


def bearer(scope: str = "tasks:read tasks:write", sub: str = "alice", secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(secret, sub, scope)}"}


@asynccontextmanager
async def served_api(settings: Settings) -> AsyncIterator[tuple[str, Settings]]:
    """The API on a real socket (uvicorn on a free port) for the body of the block: its base URL and settings."""
    served = settings.model_copy(update={"api_port": free_port()})
    base = f"http://127.0.0.1:{served.api_port}"
    async with running(api.service.run, served), httpx.AsyncClient(base_url=base) as client:

        async def up() -> bool:
            try:
                return (await client.get("/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(up, 10, what="the API to listen")
        yield base, served
