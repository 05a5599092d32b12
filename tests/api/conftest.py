from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from taskmill.settings import Settings
from taskmill.tokens import mint

SECRET = "test-secret-that-is-long-enough-for-hs256"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"jwt_secret": SECRET})


@pytest.fixture
async def client(api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://taskmill.test") as c:
            yield c


def bearer(scope: str = "tasks:read tasks:write", sub: str = "alice", secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(secret, sub, scope)}"}
