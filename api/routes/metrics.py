"""GET /metrics: Prometheus text, with the queue pressure read from the database at scrape time (D4)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import Pool, Reader
from taskmill.metrics import DUE_BACKLOG, OLDEST_DUE
from taskmill.store.pressure import due_backlog

router = APIRouter()


@router.get("/metrics", response_class=Response)
async def metrics(db: Pool, _: Reader) -> Response:
    backlog = await due_backlog(db)
    DUE_BACKLOG.set(backlog.runs)
    OLDEST_DUE.set(backlog.oldest_s)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
