"""Task definitions: create, read, list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from api import cursors
from api.auth import READ, WRITE, Principal, require
from api.deps import pool, secret_key
from api.schemas import BulkCreated, BulkItem, RunPublic, TaskPage, TaskPublic, TaskType, task_types
from taskmill.models import Schedule, Task, TaskCreate
from taskmill.states import ScheduleKind
from taskmill.store.history import run_detail
from taskmill.store.tasks import add_run, create_task, create_tasks, delete_task, set_active, update_task

router = APIRouter()

# How far in the past a one-off `at` may be and still be accepted (it then runs at once).
AT_GRACE = timedelta(seconds=60)
MAX_BULK = 10_000
NO_NUL = r"^[^\x00]*$"


TaskId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Writer = Annotated[Principal, Depends(require(WRITE))]


def _check_at(body: TaskCreate, *where: int) -> None:
    if problem := _late_at(body, where):
        raise RequestValidationError([problem])


def late_at(schedule: Schedule, now: datetime) -> str | None:
    """Why a one-off time cannot be saved at `now` (it is past by more than the grace), or None."""
    if schedule.kind is ScheduleKind.ONCE and schedule.at is not None and schedule.at < now - AT_GRACE:
        return f"is more than {AT_GRACE.seconds} s in the past"
    return None


def _late_at(body: TaskCreate, where: tuple[int, ...]) -> dict[str, Any] | None:
    if reason := late_at(body.schedule, datetime.now(UTC)):
        return {"loc": ("body", *where, "schedule", "at"), "msg": reason, "type": "value_error"}
    return None


@router.post("/tasks/bulk", status_code=201, response_model=BulkCreated)
async def create_many(
    body: Annotated[list[TaskCreate], Body(min_length=1, max_length=MAX_BULK)], request: Request, who: Writer
) -> BulkCreated:
    """Up to 10,000 tasks in one transaction: all are created, or none (422 or 409 naming each bad item)."""
    problems = [p for i, task in enumerate(body) if (p := _late_at(task, (i,)))]
    first: dict[str, int] = {}
    for i, task in enumerate(body):
        if task.name in first:
            reason = f"repeats the name of item {first[task.name]}"
            problems.append({"loc": ("body", i, "name"), "msg": reason, "type": "value_error"})
        first.setdefault(task.name, i)
    if problems:
        raise RequestValidationError(problems)
    async with pool(request).acquire() as conn, conn.transaction():
        taken = await conn.fetch("SELECT name FROM tasks WHERE name = ANY($1::text[])", list(first))
        if taken:
            names = sorted(r["name"] for r in taken)
            raise HTTPException(409, f"{len(names)} names exist already: {', '.join(map(repr, names[:20]))}")
        try:
            created = await create_tasks(conn, body, created_by=who.subject, secret_key=secret_key(request))
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, "a name was taken meanwhile; nothing was created") from None
    return BulkCreated(created=len(created), tasks=[BulkItem(id=i, name=n) for i, n in created])


@router.post("/tasks", status_code=201, response_model=TaskPublic)
async def create(body: TaskCreate, request: Request, who: Writer) -> TaskPublic:
    _check_at(body)
    async with pool(request).acquire() as conn:
        try:
            task = await create_task(conn, body, created_by=who.subject, secret_key=secret_key(request))
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"a task named {body.name!r} exists") from None
    return TaskPublic.of(task)


# Sort keys and their SQL types; the column name comes only from this table, never from the request.
SORTS = {"id": "bigint", "name": "text", "created_at": "timestamptz", "type": "text"}
SortKey = Literal["id", "-id", "name", "-name", "created_at", "-created_at", "type", "-type"]


@router.get("/tasks", response_model=TaskPage)
async def list_tasks(
    request: Request,
    _: Annotated[Principal, Depends(require(READ))],
    type: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    active: bool | None = None,
    name_prefix: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    sort: SortKey = "id",
    cursor: Annotated[str | None, Query(max_length=2000, description="next_cursor of the page before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> TaskPage:
    """Keyset pagination: stable under inserts, one index range per page whatever the page number."""
    column = sort.lstrip("-")
    descending = sort.startswith("-")
    after = cursors.decode(cursor, "cursor") if cursor else None
    if after and column == "id":
        after = (str(after[1]), after[1])
    sql = f"""SELECT * FROM tasks
           WHERE deleted_at IS NULL AND ($1::text IS NULL OR type = $1)
             AND ($2::boolean IS NULL OR active = $2) AND ($3::text IS NULL OR starts_with(name, $3))
             AND ($4::text IS NULL OR ({column}, id) {"<" if descending else ">"} ($4::{SORTS[column]}, $5::bigint))
           ORDER BY {column} {"DESC" if descending else "ASC"}, id {"DESC" if descending else "ASC"} LIMIT $6"""
    try:
        rows = await pool(request).fetch(
            sql, type, active, name_prefix, after[0] if after else None, after[1] if after else 0, limit + 1
        )
    except (
        asyncpg.InvalidTextRepresentationError,
        asyncpg.InvalidDatetimeFormatError,
        asyncpg.DatetimeFieldOverflowError,
        asyncpg.NumericValueOutOfRangeError,
    ):
        raise cursors.not_a_cursor("cursor", f"does not belong to sort {sort!r}") from None
    items = [TaskPublic.of(Task.from_record(r)) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = cursors.encode(
            str(last[column].isoformat() if column == "created_at" else last[column]), last["id"]
        )
    return TaskPage(items=items, next_cursor=next_cursor)


@router.get("/tasks/{task_id}", response_model=TaskPublic)
async def get(
    task_id: TaskId,
    request: Request,
    _: Annotated[Principal, Depends(require(READ))],
) -> TaskPublic:
    row = await pool(request).fetchrow("SELECT * FROM tasks WHERE id = $1 AND deleted_at IS NULL", task_id)
    if row is None:
        raise HTTPException(404, f"no task {task_id}")
    return TaskPublic.of(Task.from_record(row))


@router.put("/tasks/{task_id}", response_model=TaskPublic)
async def replace(task_id: TaskId, body: TaskCreate, request: Request, _: Writer) -> TaskPublic:
    """Replaces the definition; future scheduled runs are dropped and materialized again, history stays."""
    _check_at(body)
    async with pool(request).acquire() as conn:
        try:
            task = await update_task(conn, task_id, body, secret_key=secret_key(request))
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"a task named {body.name!r} exists") from None
    if task is None:
        raise HTTPException(404, f"no task {task_id}")
    return TaskPublic.of(task)


@router.put("/tasks/{task_id}/inactive", response_model=TaskPublic)
async def deactivate(task_id: TaskId, request: Request, _: Writer) -> TaskPublic:
    return await _set_active(request, task_id, False)


@router.put("/tasks/{task_id}/active", response_model=TaskPublic)
async def activate(task_id: TaskId, request: Request, _: Writer) -> TaskPublic:
    return await _set_active(request, task_id, True)


async def _set_active(request: Request, task_id: int, active: bool) -> TaskPublic:
    async with pool(request).acquire() as conn:
        if not await set_active(conn, task_id, active):
            raise HTTPException(404, f"no task {task_id}")
        row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    assert row is not None
    return TaskPublic.of(Task.from_record(row))


@router.delete("/tasks/{task_id}", status_code=204)
async def delete(task_id: TaskId, request: Request, _: Writer) -> None:
    """Cancels the runs not yet handed out; the task's history stays (its name is freed)."""
    async with pool(request).acquire() as conn:
        if not await delete_task(conn, task_id):
            raise HTTPException(404, f"no task {task_id}")


@router.post("/tasks/{task_id}/invoke", status_code=201, response_model=RunPublic)
async def invoke(task_id: TaskId, request: Request, who: Writer) -> RunPublic:
    """One run now, whatever the task's schedule."""
    async with pool(request).acquire() as conn:
        if await conn.fetchval("SELECT 1 FROM tasks WHERE id = $1 AND deleted_at IS NULL", task_id) is None:
            raise HTTPException(404, f"no task {task_id}")
        run_id = await add_run(conn, task_id, None, created_by=who.subject)
        if run_id is None:
            raise HTTPException(409, "the task was invoked this very instant already")
        detail = await run_detail(conn, run_id)
    assert detail is not None
    return RunPublic.model_validate(dict(detail[0]))


@router.get("/task-types", response_model=list[TaskType])
async def types(_: Annotated[Principal, Depends(require(READ))]) -> list[TaskType]:
    return task_types()
