"""What routes take from the app: the database pool and the settings."""

from __future__ import annotations

import asyncpg
from fastapi import Request


def pool(request: Request) -> asyncpg.Pool:
    db: asyncpg.Pool = request.app.state.pool
    return db


def secret_key(request: Request) -> str:
    key: str = request.app.state.settings.secret_key
    return key
