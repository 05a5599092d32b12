"""GET /metrics: Prometheus text, with the queue pressure read from the database at scrape time (D4)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from api.deps import Pool, Reader
from taskmill.store.pressure import due_backlog

router = APIRouter()

BACKLOG = Gauge("taskmill_due_backlog_runs", "Runs due and not yet handed to the broker")
OLDEST = Gauge("taskmill_oldest_due_run_age_seconds", "How long the oldest due, unpublished run has waited")


@router.get("/metrics", response_class=Response)
async def metrics(db: Pool, _: Reader) -> Response:
    backlog = await due_backlog(db)
    BACKLOG.set(backlog.runs)
    OLDEST.set(backlog.oldest_s)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
