"""GET /health, without a token: 200 when the database and the broker answer, 503 naming what does not."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import Pool
from taskmill.db import answers

router = APIRouter()


@router.get("/health")
async def health(request: Request, db: Pool) -> JSONResponse:
    broker = request.app.state.broker
    checks = {"database": await answers(db), "broker": not broker.is_closed and broker.connected.is_set()}
    ok = all(checks.values())
    return JSONResponse({"status": "ok" if ok else "down", "checks": checks}, status_code=200 if ok else 503)
