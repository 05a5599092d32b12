"""Runs: recent runs across all tasks, a task's past and upcoming runs, one run with its attempts and status
changes, cancelling, retrying."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from api import cursors
from api.deps import Pool, Reader, Writer
from api.schemas import AttemptPublic, RunDetail, RunPublic, TransitionPublic
from taskmill.models import Instant
from taskmill.states import RunState
from taskmill.store.history import recent_runs, run_detail, task_runs
from taskmill.store.runs import Retry, cancel_run, retry_run
from taskmill.store.tasks import task_ever_existed

router = APIRouter()

Id = Annotated[int, Path(ge=1, le=2**63 - 1)]


class RecentRun(RunPublic):
    task_name: str


class RunPage(BaseModel):
    items: list[RecentRun]
    next_cursor: str | None  # pass as `before` for the next (older) page


def _uncursor(cursor: str) -> tuple[datetime, int]:
    at, run_id = cursors.decode(cursor, "before")
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        raise cursors.not_a_cursor("before") from None
    if when.tzinfo is None:
        raise cursors.not_a_cursor("before")
    return when, run_id


@router.get("/runs", response_model=RunPage)
async def list_runs(
    db: Pool,
    _: Reader,
    status: RunState | None = None,
    task_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    before: Annotated[str | None, Query(max_length=200, description="next_cursor of the page before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunPage:
    """Recent runs across all tasks, newest scheduled first, with the task's name. The first page starts now (runs
    materialized ahead are left out: a task's upcoming runs are at /tasks/{id}/runs)."""
    rows = await recent_runs(
        db,
        status=status.value if status else None,
        task_id=task_id,
        before=_uncursor(before) if before else None,
        limit=limit + 1,
    )
    items = [RecentRun.model_validate(dict(r)) for r in rows[:limit]]
    last = items[-1] if len(rows) > limit else None
    return RunPage(items=items, next_cursor=cursors.encode(last.scheduled_time.isoformat(), last.id) if last else None)


@router.get("/tasks/{task_id}/runs", response_model=list[RunPublic])
async def runs_of_task(
    task_id: Id,
    db: Pool,
    _: Reader,
    status: RunState | None = None,
    since: Annotated[Instant | None, Query(description="scheduled at or after")] = None,
    until: Annotated[Instant | None, Query(description="scheduled before")] = None,
    before: Annotated[Instant | None, Query(description="cursor: the scheduled_time of the last run seen")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunPublic]:
    """Newest first, upcoming runs included."""
    if not await task_ever_existed(db, task_id):
        raise HTTPException(404, f"no task {task_id}")
    rows = await task_runs(db, task_id, status.value if status else None, since, until, before, limit)
    return [RunPublic.model_validate(dict(r)) for r in rows]


@router.get("/runs/{run_id}", response_model=RunDetail)
async def get_run(run_id: Id, db: Pool, _: Reader) -> RunDetail:
    detail = await run_detail(db, run_id)
    if detail is None:
        raise HTTPException(404, f"no run {run_id}")
    run, attempts, transitions = detail
    return RunDetail(
        **dict(run),
        attempts=[AttemptPublic.model_validate(dict(a)) for a in attempts],
        transitions=[TransitionPublic.model_validate(dict(t)) for t in transitions],
    )


@router.post("/runs/{run_id}/cancel", response_model=RunPublic)
async def cancel(run_id: Id, db: Pool, _: Writer) -> RunPublic:
    """Cancels a run that has not ended: one running is stopped by its processor within TASKMILL_CANCEL_CHECK_S, and
    the children it spawned that have not ended are cancelled with it. 409 when it has ended."""
    cancelled = await cancel_run(db, run_id)
    detail = await run_detail(db, run_id)
    if detail is None:
        raise HTTPException(404, f"no run {run_id}")
    if not cancelled:
        raise HTTPException(409, f"run {run_id} is {detail[0]['status']}: it has ended, there is nothing to cancel")
    return RunPublic.model_validate(dict(detail[0]))


def _not_retried(run_id: int, retry: Retry) -> str:
    """Why a run was not retried, in words."""
    if retry.status not in (RunState.FAILED, RunState.DEAD):
        return f"run {run_id} is {retry.status}: only a failed or dead run can be retried"
    if retry.task_deleted:
        return f"run {run_id} is of task {retry.task_id}, which was deleted"
    if retry.workflow_run_id is not None:
        return (
            f"run {run_id} is a step of workflow run {retry.workflow_run_id}, which counted its outcome already: "
            "run the workflow again"
        )
    return (
        f"run {run_id} was spawned by run {retry.parent_id}, which counted its outcome already: a spawned run is not "
        "retried on its own"
    )


@router.post("/runs/{run_id}/retry", response_model=RunPublic)
async def retry(run_id: Id, db: Pool, _: Writer) -> RunPublic:
    """A failed or dead run goes back to be run again as its next attempt: the same run, its earlier attempts and
    status changes kept, due at once and never taken for missed, with the retries it had not spent (none when it died
    of spending them). 409 naming the reason for a run in any other state (a second click finds it scheduled), a
    workflow's step, a spawned child or a deleted task's run. See taskmill/store/runs.py, RETRY_RUN, for why the
    same run and not a new one."""
    retried = await retry_run(db, run_id)
    if retried is None:
        raise HTTPException(404, f"no run {run_id}")
    if not retried.retried:
        raise HTTPException(409, _not_retried(run_id, retried))
    detail = await run_detail(db, run_id)
    assert detail is not None
    return RunPublic.model_validate(dict(detail[0]))
