"""GET /metrics: Prometheus text, with the queue pressure read from the database at scrape time (D4)."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from api.auth import READ, Principal, require

router = APIRouter()

BACKLOG = Gauge("taskmill_due_backlog_runs", "Runs due and not yet handed to the broker")
OLDEST = Gauge("taskmill_oldest_due_run_age_seconds", "How long the oldest due, unpublished run has waited")

# Both come from the partial index on due runs: cheap even on a large table.
PRESSURE = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(scheduled_time)), 0)::float8
FROM task_schedule WHERE status = 'scheduled' AND scheduled_time <= now()
"""


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, _: Annotated[Principal, Depends(require(READ))]) -> Response:
    pool: asyncpg.Pool = request.app.state.pool
    backlog, oldest = await pool.fetchrow(PRESSURE) or (0, 0.0)
    BACKLOG.set(backlog)
    OLDEST.set(oldest)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
