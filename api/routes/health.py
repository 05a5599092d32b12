"""GET /health, without a token: 200 when the database and the broker answer, 503 naming what does not."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import Pool
from taskmill.db import answers
from taskmill.store.processors import LIVE_WITHIN_S, recent, unserved
from taskmill.tasktypes import BUILTIN

router = APIRouter()


@router.get("/health")
async def health(request: Request, db: Pool) -> JSONResponse:
    """Whether the database and the broker answer (200, else 503), the processors at work with the isolation their
    command runs get, and the task types with due runs waiting that no live processor serves (at most 10,000
    counted a type)."""
    broker = request.app.state.broker
    checks = {"database": await answers(db)}
    if broker is not None:  # the RabbitMQ transport; over PostgreSQL the database is the transport
        checks["broker"] = not broker.is_closed and broker.connected.is_set()
    ok = all(checks.values())
    processors = []
    waiting = []
    if checks["database"]:
        processors = [
            {
                "worker": p.worker,
                "seen_at": p.seen_at.isoformat(),
                "command_isolation": p.command_isolation,
                "handlers": p.handlers,
                "types": p.types,
            }
            for p in await recent(db, LIVE_WITHIN_S)
        ]
        waiting = [
            {"type": name, "due_runs": count, "reason": "no live processor serves this type"}
            for name, count in await unserved(db, LIVE_WITHIN_S, list(BUILTIN))
        ]
    body = {
        "status": "ok" if ok else "down",
        "transport": request.app.state.settings.transport_name,
        "checks": checks,
        "processors": processors,
        "unserved_types": waiting,
    }
    return JSONResponse(body, status_code=200 if ok else 503)
