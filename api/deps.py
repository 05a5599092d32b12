"""What routes take from the app, as dependency aliases: `db: Pool`, `settings: AppSettings`, `who: Writer`."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from api.auth import READ, WRITE, Principal, require
from taskmill.planning.plan import History
from taskmill.settings import Settings


def _pool(request: Request) -> asyncpg.Pool:
    db: asyncpg.Pool = request.app.state.pool
    return db


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _history(request: Request) -> History:
    history: History = request.app.state.history
    return history


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
AppSettings = Annotated[Settings, Depends(_settings)]
# The per-type means the forecast weighs runs by, cached across requests.
TypeHistory = Annotated[History, Depends(_history)]
# The caller, with the scope each needs (401 without a valid token, 403 without the scope; admin has all).
Reader = Annotated[Principal, Depends(require(READ))]
Writer = Annotated[Principal, Depends(require(WRITE))]
Anyone = Annotated[Principal, Depends(require(""))]
