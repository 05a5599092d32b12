"""Task definitions: create, read, list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from api.auth import READ, WRITE, Principal, require
from api.schemas import TaskPage, TaskPublic, TaskType, task_types
from taskmill.models import Task, TaskCreate
from taskmill.states import ScheduleKind
from taskmill.store.tasks import create_task

router = APIRouter()

# How far in the past a one-off `at` may be and still be accepted (it then runs at once).
AT_GRACE = timedelta(seconds=60)


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


@router.post("/tasks", status_code=201, response_model=TaskPublic)
async def create(body: TaskCreate, request: Request, who: Annotated[Principal, Depends(require(WRITE))]) -> TaskPublic:
    s = body.schedule
    if s.kind is ScheduleKind.ONCE and s.at is not None and s.at < datetime.now(UTC) - AT_GRACE:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "schedule", "at"),
                    "msg": f"is more than {AT_GRACE.seconds} s in the past",
                    "type": "value_error",
                }
            ]
        )
    async with _pool(request).acquire() as conn:
        try:
            task = await create_task(conn, body, created_by=who.subject)
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"a task named {body.name!r} exists") from None
    return TaskPublic.of(task)


@router.get("/tasks", response_model=TaskPage)
async def list_tasks(
    request: Request,
    _: Annotated[Principal, Depends(require(READ))],
    type: Annotated[str | None, Query(max_length=100)] = None,
    active: bool | None = None,
    name_prefix: Annotated[str | None, Query(max_length=200)] = None,
    after: Annotated[int | None, Query(ge=0, description="cursor: the id of the last task of the page before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> TaskPage:
    rows = await _pool(request).fetch(
        """SELECT * FROM tasks
           WHERE deleted_at IS NULL AND id > $1 AND ($2::text IS NULL OR type = $2)
             AND ($3::boolean IS NULL OR active = $3) AND ($4::text IS NULL OR starts_with(name, $4))
           ORDER BY id LIMIT $5""",
        after or 0,
        type,
        active,
        name_prefix,
        limit + 1,
    )
    items = [TaskPublic.of(Task.from_record(r)) for r in rows[:limit]]
    return TaskPage(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


@router.get("/tasks/{task_id}", response_model=TaskPublic)
async def get(
    task_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    request: Request,
    _: Annotated[Principal, Depends(require(READ))],
) -> TaskPublic:
    row = await _pool(request).fetchrow("SELECT * FROM tasks WHERE id = $1 AND deleted_at IS NULL", task_id)
    if row is None:
        raise HTTPException(404, f"no task {task_id}")
    return TaskPublic.of(Task.from_record(row))


@router.get("/task-types", response_model=list[TaskType])
async def types(_: Annotated[Principal, Depends(require(READ))]) -> list[TaskType]:
    return task_types()
