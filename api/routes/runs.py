"""Runs: a task's past and upcoming runs, one run with its attempts and status changes, cancelling."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from api.auth import READ, WRITE, Principal, require
from api.deps import pool
from api.schemas import AttemptPublic, RunDetail, RunPublic, TransitionPublic
from taskmill.states import RunState
from taskmill.store.history import cancel_run, run_detail, task_runs

router = APIRouter()

Id = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("/tasks/{task_id}/runs", response_model=list[RunPublic])
async def runs_of_task(
    task_id: Id,
    request: Request,
    _: Annotated[Principal, Depends(require(READ))],
    status: RunState | None = None,
    since: Annotated[datetime | None, Query(description="scheduled at or after")] = None,
    until: Annotated[datetime | None, Query(description="scheduled before")] = None,
    before: Annotated[datetime | None, Query(description="cursor: the scheduled_time of the last run seen")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunPublic]:
    """Newest first, upcoming runs included."""
    db = pool(request)
    if await db.fetchval("SELECT 1 FROM tasks WHERE id = $1", task_id) is None:
        raise HTTPException(404, f"no task {task_id}")
    rows = await task_runs(db, task_id, status.value if status else None, since, until, before, limit)
    return [RunPublic.model_validate(dict(r)) for r in rows]


@router.get("/runs/{run_id}", response_model=RunDetail)
async def get_run(run_id: Id, request: Request, _: Annotated[Principal, Depends(require(READ))]) -> RunDetail:
    detail = await run_detail(pool(request), run_id)
    if detail is None:
        raise HTTPException(404, f"no run {run_id}")
    run, attempts, transitions = detail
    return RunDetail(
        **dict(run),
        attempts=[AttemptPublic.model_validate(dict(a)) for a in attempts],
        transitions=[TransitionPublic.model_validate(dict(t)) for t in transitions],
    )


@router.post("/runs/{run_id}/cancel", response_model=RunPublic)
async def cancel(run_id: Id, request: Request, _: Annotated[Principal, Depends(require(WRITE))]) -> RunPublic:
    db = pool(request)
    cancelled = await cancel_run(db, run_id)
    detail = await run_detail(db, run_id)
    if detail is None:
        raise HTTPException(404, f"no run {run_id}")
    if not cancelled:
        raise HTTPException(409, f"run {run_id} is {detail[0]['status']}: only a run not yet started can be cancelled")
    return RunPublic.model_validate(dict(detail[0]))
