"""Task definitions: create (one or many), read, list, replace, pause and resume, delete, invoke."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Body, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from api import cursors
from api.auth import COMMAND, Principal
from api.checks import Registry, body_problems, fitted
from api.deps import AppSettings, Pool, Reader, Writer
from api.errors import invalid
from api.schemas import (
    BulkCreated,
    BulkItem,
    RunPublic,
    SecretsChanged,
    SecretsToCompare,
    TaskPage,
    TaskPublic,
    TaskType,
    task_types,
)
from taskmill.cron import ScheduleError
from taskmill.db import Connection, db_now
from taskmill.models import Instant, Task, TaskCreate
from taskmill.schedules import occurrences
from taskmill.settings import Settings
from taskmill.states import ScheduleKind
from taskmill.store.history import run_detail
from taskmill.store.schedule import insert_backfill
from taskmill.store.tasks import (
    Origin,
    SortKey,
    add_run,
    create_task,
    create_tasks,
    delete_task,
    get_task,
    list_tasks,
    secrets_changed,
    set_active,
    taken_names,
    update_task,
)
from taskmill.store.tasktypes import registered, registry_for
from taskmill.tasktypes import COMMAND_TYPE

router = APIRouter()

MAX_BULK = 10_000
NO_NUL = r"^[^\x00]*$"

TaskId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _problems(
    body: TaskCreate, settings: Settings, registry: Registry, now: datetime, *where: int
) -> list[dict[str, Any]]:
    """What the installation refuses in a definition the model accepts (see body_problems), and a one-off time
    long past."""
    problems = body_problems(body, settings, registry, *where)
    if reason := body.schedule.late(now):
        problems.append({"loc": ("body", *where, "schedule", "at"), "msg": reason, "type": "value_error"})
    return problems


def may_write(who: Principal, *types: str) -> None:
    """A command task (created, or edited into or out of one) needs tasks:command as well as tasks:write."""
    if COMMAND_TYPE in types:
        who.require(COMMAND, "creating or editing a command task")


def _checked(body: TaskCreate, settings: Settings, registry: Registry) -> TaskCreate:
    if problems := _problems(body, settings, registry, datetime.now(UTC)):
        raise RequestValidationError(problems)
    return fitted(body, settings, registry)


@router.post("/tasks/bulk", status_code=201, response_model=BulkCreated)
async def create_many(
    body: Annotated[list[TaskCreate], Body(min_length=1, max_length=MAX_BULK)],
    db: Pool,
    settings: AppSettings,
    who: Writer,
) -> BulkCreated:
    """Up to 10,000 tasks in one transaction: all are created, or none (422 or 409 naming each bad item)."""
    may_write(who, *{task.type for task in body})
    now = datetime.now(UTC)
    registry = await registry_for(db, (task.type for task in body))
    problems = [p for i, task in enumerate(body) for p in _problems(task, settings, registry, now, i)]
    first: dict[str, int] = {}
    for i, task in enumerate(body):
        if task.name in first:
            reason = f"repeats the name of item {first[task.name]}"
            problems.append({"loc": ("body", i, "name"), "msg": reason, "type": "value_error"})
        first.setdefault(task.name, i)
    if problems:
        raise RequestValidationError(problems)
    specs = [fitted(task, settings, registry) for task in body]
    async with db.acquire() as conn, conn.transaction():
        if taken := await taken_names(conn, list(first)):
            raise HTTPException(409, f"{len(taken)} names exist already: {', '.join(map(repr, taken[:20]))}")
        try:
            created = await create_tasks(conn, specs, created_by=who.subject, secret_key=settings.secret_key)
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, "a name was taken meanwhile; nothing was created") from None
    return BulkCreated(created=len(created), tasks=[BulkItem(id=i, name=n) for i, n in created])


@router.post("/tasks", status_code=201, response_model=TaskPublic)
async def create(body: TaskCreate, db: Pool, settings: AppSettings, who: Writer) -> TaskPublic:
    may_write(who, body.type)
    spec = _checked(body, settings, await registry_for(db, [body.type]))
    async with db.acquire() as conn:
        try:
            task = await create_task(conn, spec, created_by=who.subject, secret_key=settings.secret_key)
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"a task named {body.name!r} exists") from None
    return TaskPublic.of(task)


def _after(cursor: str, column: str) -> tuple[Any, int]:
    """The (sort value, id) a cursor holds, as the sort column's type; a 422 naming `cursor` if it cannot be."""
    value, row_id = cursors.decode(cursor, "cursor")
    if column == "id":
        return row_id, row_id
    if column != "created_at":
        return value, row_id
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise cursors.not_a_cursor("cursor", "does not belong to sort 'created_at'") from None
    if when.tzinfo is None:
        raise cursors.not_a_cursor("cursor", "does not belong to sort 'created_at'")
    return when, row_id


@router.get("/tasks", response_model=TaskPage)
async def tasks_page(
    db: Pool,
    _: Reader,
    type: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    active: bool | None = None,
    name_prefix: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    completed: Annotated[bool | None, Query(description="one-offs whose runs have all ended, or not")] = None,
    origin: Annotated[
        list[Origin] | None,
        Query(
            description="where the tasks came from (repeatable): `api` (the default), or the one-off rows of single "
            "runs made by `defer`, the submit queue (`submit`) or a spawning run (`spawn`)"
        ),
    ] = None,
    sort: SortKey = "id",
    cursor: Annotated[str | None, Query(max_length=2000, description="next_cursor of the page before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> TaskPage:
    """Keyset pagination: stable under inserts, one index range per page whatever the page number."""
    column = sort.lstrip("-")
    after = _after(cursor, column) if cursor else None
    tasks = await list_tasks(
        db,
        type=type,
        active=active,
        name_prefix=name_prefix,
        completed=completed,
        origins=origin or ["api"],
        sort=sort,
        after=after,
        limit=limit + 1,
    )
    next_cursor = None
    if len(tasks) > limit:
        last = tasks[limit - 1]
        value = getattr(last, column)
        next_cursor = cursors.encode(value.isoformat() if isinstance(value, datetime) else str(value), last.id)
    return TaskPage(items=[TaskPublic.of(t) for t in tasks[:limit]], next_cursor=next_cursor)


def _found(task: Task | None, task_id: int) -> TaskPublic:
    if task is None:
        raise HTTPException(404, f"no task {task_id}")
    return TaskPublic.of(task)


async def _own_task(conn: Connection, task_id: int) -> Task:
    """The task, which must be one of its own: a workflow's step changes with its workflow (409 otherwise)."""
    task = await get_task(conn, task_id)
    if task is None:
        raise HTTPException(404, f"no task {task_id}")
    if task.workflow_id is not None:
        raise HTTPException(409, f"task {task_id} is a step of a workflow: change it through PUT /workflows/{{name}}")
    return task


@router.get("/tasks/{task_id}", response_model=TaskPublic)
async def get(task_id: TaskId, db: Pool, _: Reader) -> TaskPublic:
    return _found(await get_task(db, task_id), task_id)


@router.put("/tasks/{task_id}", response_model=TaskPublic)
async def replace(task_id: TaskId, body: TaskCreate, db: Pool, settings: AppSettings, who: Writer) -> TaskPublic:
    """Replaces the definition; future scheduled runs are dropped and materialized again, history stays."""
    spec = _checked(body, settings, await registry_for(db, [body.type]))
    async with db.acquire() as conn:
        existing = await _own_task(conn, task_id)
        may_write(who, body.type, existing.type)
        try:
            task = await update_task(conn, task_id, spec, secret_key=settings.secret_key)
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"a task named {body.name!r} exists") from None
    return _found(task, task_id)


@router.post("/tasks/{task_id}/secrets/compare", response_model=SecretsChanged)
async def compare_secrets(
    task_id: TaskId, body: SecretsToCompare, db: Pool, settings: AppSettings, who: Writer
) -> SecretsChanged:
    """Which of the given secret values are not the task's stored ones: by keyed digests, nothing is decrypted or
    shown. `taskmill apply` asks it, so a file that only rotates a secret's value is applied. Takes what writing the
    task takes (tasks:write, and tasks:command for a command task)."""
    async with db.acquire() as conn:
        existing = await _own_task(conn, task_id)
        may_write(who, existing.type)
        values = {name: value.get_secret_value() for name, value in body.secrets.items()}
        found = await secrets_changed(conn, task_id, values, settings.secret_key)
    if found is None:
        raise HTTPException(404, f"no task {task_id}")
    return SecretsChanged(changed=found)


@router.put("/tasks/{task_id}/inactive", response_model=TaskPublic)
async def deactivate(task_id: TaskId, db: Pool, _: Writer) -> TaskPublic:
    async with db.acquire() as conn:
        await _own_task(conn, task_id)
        return _found(await set_active(conn, task_id, False), task_id)


@router.put("/tasks/{task_id}/active", response_model=TaskPublic)
async def activate(task_id: TaskId, db: Pool, _: Writer) -> TaskPublic:
    async with db.acquire() as conn:
        await _own_task(conn, task_id)
        return _found(await set_active(conn, task_id, True), task_id)


@router.delete("/tasks/{task_id}", status_code=204)
async def delete(task_id: TaskId, db: Pool, _: Writer) -> None:
    """Cancels the runs not yet handed out; the task's history stays (its name is freed)."""
    async with db.acquire() as conn:
        await _own_task(conn, task_id)
        if not await delete_task(conn, task_id):
            raise HTTPException(404, f"no task {task_id}")


@router.post("/tasks/{task_id}/invoke", status_code=201, response_model=RunPublic)
async def invoke(task_id: TaskId, db: Pool, who: Writer) -> RunPublic:
    """One run now, whatever the task's schedule."""
    async with db.acquire() as conn:
        if await get_task(conn, task_id) is None:
            raise HTTPException(404, f"no task {task_id}")
        run_id = await add_run(conn, task_id, None, created_by=who.subject)
        if run_id is None:
            raise HTTPException(409, "the task was invoked this very instant already")
        detail = await run_detail(conn, run_id)
    assert detail is not None
    return RunPublic.model_validate(dict(detail[0]))


@router.get("/task-types", response_model=list[TaskType])
async def types(db: Pool, _: Reader) -> list[TaskType]:
    """The built-in types, then the Python handlers processors registered, with their payload JSON schemas."""
    return task_types(list((await registered(db)).values()))


MAX_BACKFILL = 10_000


class Backfill(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    start: Instant = Field(alias="from")
    to: Instant


class Backfilled(BaseModel):
    created: int  # occurrences made now
    existing: int  # occurrences that had a run already (whatever became of it)


@router.post("/tasks/{task_id}/backfill", status_code=201, response_model=Backfilled)
async def backfill(task_id: TaskId, body: Backfill, db: Pool, who: Writer) -> Backfilled:
    """The occurrences of [from, to) as runs, now: at most 10,000, in the past, idempotent (a repeat makes none)."""
    if body.start >= body.to:
        raise invalid(("body", "to"), "must be after `from`")
    async with db.acquire() as conn:
        task = await _own_task(conn, task_id)
        if task.schedule_kind not in (ScheduleKind.CRON, ScheduleKind.INTERVAL):
            reason = f"task {task_id} has a {task.schedule_kind} schedule: only cron and interval tasks backfill"
            raise HTTPException(409, reason)
        now = await db_now(conn)
        if body.to > now:
            raise invalid(("body", "to"), "is in the future: a backfill is of a past range")
        try:
            times = await asyncio.to_thread(occurrences, task, body.start, body.to, MAX_BACKFILL + 1)
        except ScheduleError as exc:
            raise HTTPException(409, f"task {task_id}'s schedule cannot be expanded: {exc}") from None
        if len(times) > MAX_BACKFILL:
            raise invalid(("body", "to"), f"the range holds more than {MAX_BACKFILL} occurrences: backfill it in parts")
        created = await insert_backfill(conn, task_id, times, who.subject)
    return Backfilled(created=created, existing=len(times) - created)
