"""Workflows: define (create, replace, delete), list and read them; invoke one; read and cancel a workflow run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from api.auth import Principal
from api.checks import body_problems, fitted
from api.deps import AppSettings, Pool, Reader, Writer
from api.errors import invalid
from api.routes.tasks import may_write
from api.schemas import StepSecretsChanged, StepSecretsToCompare
from taskmill.models import Schedule
from taskmill.settings import Settings
from taskmill.store.tasktypes import registry_for
from taskmill.store.workflows import (
    Stored,
    cancel_workflow_run,
    create_workflow,
    delete_workflow,
    get_workflow,
    invoke,
    list_workflows,
    recent_runs,
    step_secrets_changed,
    update_workflow,
    workflow_run,
)
from taskmill.workflows import WorkflowCreate, graph_problems

router = APIRouter()

Name = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
RunId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class StepPublic(BaseModel):
    name: str
    type: str
    payload: dict[str, Any]
    depends_on: list[str]
    continue_on_failure: bool
    max_retries: int
    retry_delay_seconds: float
    backoff: float
    timeout_seconds: float
    estimated_ms: int
    priority: int
    secrets: list[str]  # names only


class WorkflowPublic(BaseModel):
    id: int
    name: str
    description: str
    schedule: Schedule | None
    active: bool
    tasks: list[StepPublic]
    created_by: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, stored: Stored) -> WorkflowPublic:
        wf = stored.workflow
        steps = [
            StepPublic(**{k: v for k, v in s.items() if k not in ("id", "secret_names")}, secrets=s["secret_names"])
            for s in stored.steps
        ]
        return cls(
            id=wf.id,
            name=wf.name,
            description=wf.description,
            schedule=wf.schedule,
            active=wf.active,
            tasks=steps,
            created_by=wf.created_by,
            created_at=wf.created_at,
            updated_at=wf.updated_at,
        )


class WorkflowPage(BaseModel):
    items: list[WorkflowPublic]
    next_cursor: str | None


class WorkflowRunRef(BaseModel):
    id: int
    workflow: str
    status: str


class StepRun(BaseModel):
    task: str
    run_id: int
    status: str
    type: str
    depends_on: list[str]
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


class WorkflowRunPublic(BaseModel):
    id: int
    workflow: str
    status: str
    scheduled_time: datetime
    created_at: datetime
    finished_at: datetime | None
    created_by: str | None
    runs: list[StepRun]


class WorkflowRunSummary(BaseModel):
    id: int
    status: str
    scheduled_time: datetime
    created_at: datetime
    finished_at: datetime | None
    open: int
    failed: int


async def _checked(body: WorkflowCreate, db: asyncpg.Pool, settings: Settings, who: Principal) -> WorkflowCreate:
    """The graph's problems and each step's (its type, payload and timeout), all at once; steps get their default
    timeouts."""
    may_write(who, *{step.type for step in body.tasks})
    registry = await registry_for(db, (step.type for step in body.tasks))
    problems = graph_problems(body)
    for i, step in enumerate(body.tasks):
        problems.extend(body_problems(step, settings, registry, "tasks", i))
    if body.schedule is not None and (reason := body.schedule.late(datetime.now(UTC))):
        problems.append({"loc": ("body", "schedule", "at"), "msg": reason, "type": "value_error"})
    if problems:
        raise RequestValidationError(problems)
    return body.model_copy(update={"tasks": [fitted(step, settings, registry) for step in body.tasks]})


async def _found(db: asyncpg.Pool, name: str) -> Stored:
    stored = await get_workflow(db, name)
    if stored is None:
        raise HTTPException(404, f"no workflow {name!r}")
    return stored


@router.post("/workflows", status_code=201, response_model=WorkflowPublic)
async def create(body: WorkflowCreate, db: Pool, settings: AppSettings, who: Writer) -> WorkflowPublic:
    """A workflow and its steps. Unknown step names and cycles are 422s naming the step (and the cycle)."""
    spec = await _checked(body, db, settings, who)
    async with db.acquire() as conn:
        try:
            stored = await create_workflow(conn, spec, created_by=who.subject, secret_key=settings.secret_key)
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"a workflow named {body.name!r} exists") from None
    return WorkflowPublic.of(stored)


@router.get("/workflows", response_model=WorkflowPage)
async def workflows_page(
    db: Pool,
    _: Reader,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]*$", description="next_cursor")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> WorkflowPage:
    """By name; `next_cursor` (the last name) gives the next page."""
    found = await list_workflows(db, cursor, limit + 1)
    more = len(found) > limit
    return WorkflowPage(
        items=[WorkflowPublic.of(s) for s in found[:limit]],
        next_cursor=found[limit - 1].workflow.name if more else None,
    )


@router.get("/workflows/{name}", response_model=WorkflowPublic)
async def get(name: Name, db: Pool, _: Reader) -> WorkflowPublic:
    return WorkflowPublic.of(await _found(db, name))


@router.put("/workflows/{name}", response_model=WorkflowPublic)
async def replace(name: Name, body: WorkflowCreate, db: Pool, settings: AppSettings, who: Writer) -> WorkflowPublic:
    """Replaces the definition. Workflow runs already started go on as they began."""
    if body.name != name:
        raise invalid(("body", "name"), f"must be the workflow's name in the path ({name!r})")
    spec = await _checked(body, db, settings, who)
    stored = await _found(db, name)
    may_write(who, *(s["type"] for s in stored.steps))
    async with db.acquire() as conn:
        updated = await update_workflow(conn, stored, spec, created_by=who.subject, secret_key=settings.secret_key)
    return WorkflowPublic.of(updated)


@router.post("/workflows/{name}/secrets/compare", response_model=StepSecretsChanged)
async def compare_secrets(
    name: Name, body: StepSecretsToCompare, db: Pool, settings: AppSettings, who: Writer
) -> StepSecretsChanged:
    """Which of the given secret values, per step, are not the stored ones: by keyed digests, nothing is decrypted or
    shown (`taskmill apply` asks it, so a file that only rotates a step's secret is applied)."""
    stored = await _found(db, name)
    may_write(who, *(s["type"] for s in stored.steps))
    values = {step: {k: v.get_secret_value() for k, v in given.items()} for step, given in body.tasks.items()}
    changed = await step_secrets_changed(db, stored.workflow.id, values, settings.secret_key)
    return StepSecretsChanged(changed=changed)


@router.delete("/workflows/{name}", status_code=204)
async def delete(name: Name, db: Pool, _: Writer) -> None:
    """Cancels what its runs have not started; their history stays."""
    stored = await _found(db, name)
    async with db.acquire() as conn:
        await delete_workflow(conn, stored.workflow.id)


@router.post("/workflows/{name}/invoke", status_code=201, response_model=WorkflowRunRef)
async def invoke_workflow(name: Name, db: Pool, who: Writer) -> WorkflowRunRef:
    """One workflow run now, whatever the schedule: its steps without dependencies are due at once."""
    stored = await _found(db, name)
    run_id = await invoke(db, stored.workflow.id, created_by=who.subject)
    if run_id is None:
        raise HTTPException(409, "the workflow was invoked this very instant already")
    return WorkflowRunRef(id=run_id, workflow=name, status="running")


@router.get("/workflows/{name}/runs", response_model=list[WorkflowRunSummary])
async def runs_of(
    name: Name, db: Pool, _: Reader, limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> list[WorkflowRunSummary]:
    """The latest workflow runs, newest first."""
    stored = await _found(db, name)
    return [WorkflowRunSummary(**r) for r in await recent_runs(db, stored.workflow.id, limit)]


@router.get("/workflow-runs/{run_id}", response_model=WorkflowRunPublic)
async def get_run(run_id: RunId, db: Pool, _: Reader) -> WorkflowRunPublic:
    found = await workflow_run(db, run_id)
    if found is None:
        raise HTTPException(404, f"no workflow run {run_id}")
    return WorkflowRunPublic(**found)


@router.post("/workflow-runs/{run_id}/cancel", response_model=WorkflowRunPublic)
async def cancel(run_id: RunId, db: Pool, _: Writer) -> WorkflowRunPublic:
    """Cancels the steps that have not ended (a running one is stopped by its processor) and what they spawned. 409
    when the run has ended."""
    async with db.acquire() as conn, conn.transaction():
        cancelled = await cancel_workflow_run(conn, run_id)
    found = await workflow_run(db, run_id)
    if found is None:
        raise HTTPException(404, f"no workflow run {run_id}")
    if not cancelled:
        raise HTTPException(409, f"workflow run {run_id} has ended ({found['status']})")
    return WorkflowRunPublic(**found)
