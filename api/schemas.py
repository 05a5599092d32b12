"""The API's public shapes (what it returns); what it accepts is taskmill.models.TaskCreate."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, Field

from taskmill.models import Schedule, SecretMap, Task
from taskmill.store.tasks import ListedTask
from taskmill.store.tasktypes import Registered
from taskmill.tasktypes import BUILTIN


class TaskPublic(BaseModel):
    id: int
    name: str
    type: str
    payload: dict[str, Any]
    schedule: Schedule
    active: bool
    max_retries: int
    retry_delay_seconds: float
    backoff: float
    timeout_seconds: float
    estimated_ms: int
    created_by: str | None
    created_at: datetime
    secrets: list[str]  # names only: the values never leave the server
    misfire: str
    misfire_grace_seconds: int
    catchup_window_seconds: int
    window_seconds: int
    overlap: str
    max_concurrency: int | None
    concurrency_key: str | None
    priority: int
    # `api` (POST /tasks, the dashboard, `taskmill apply`), or the one-off row of a single run made by `defer`, the
    # submit queue or a spawning run (`defer`, `submit`, `spawn`), purged with its run
    origin: str
    completed: bool  # a one-off whose runs have all ended

    @overload
    @classmethod
    def of(cls, task: ListedTask) -> TaskListed: ...

    @overload
    @classmethod
    def of(cls, task: Task) -> TaskPublic: ...

    @classmethod
    def of(cls, task: Task) -> TaskPublic:
        schedule = Schedule.model_construct(
            kind=task.schedule_kind,
            at=task.run_at,
            cron=task.cron,
            every_seconds=task.every_seconds,
            timezone=task.timezone,
        )
        public = cls(
            id=task.id,
            name=task.name,
            type=task.type,
            payload=task.payload,
            schedule=schedule,
            active=task.active,
            max_retries=task.max_retries,
            retry_delay_seconds=task.retry_delay_seconds,
            backoff=task.backoff,
            timeout_seconds=task.timeout_seconds,
            estimated_ms=task.estimated_ms,
            created_by=task.created_by,
            created_at=task.created_at,
            secrets=task.secret_names,
            misfire=task.misfire,
            misfire_grace_seconds=task.misfire_grace_seconds,
            catchup_window_seconds=task.catchup_window_seconds,
            window_seconds=task.window_seconds,
            overlap=task.overlap,
            max_concurrency=task.max_concurrency,
            concurrency_key=task.concurrency_key,
            priority=task.priority,
            origin=task.origin,
            completed=task.completed,
        )
        return TaskListed.listed(public, task) if isinstance(task, ListedTask) else public


class LastRun(BaseModel):
    id: int
    status: str
    scheduled_time: datetime
    finished_at: datetime | None


class TaskListed(TaskPublic):
    """A task of the listing (GET /tasks), with its next run and its latest one."""

    next_run_at: datetime | None  # the first run after now not started yet; None: none is scheduled
    last_run: LastRun | None  # the latest run scheduled up to now, whatever became of it; None: none yet

    @classmethod
    def listed(cls, public: TaskPublic, task: ListedTask) -> TaskListed:
        last = task.last_run
        return cls(
            **dict(public),
            next_run_at=task.next_run_at,
            last_run=None
            if last is None
            else LastRun(
                id=last.id, status=last.status, scheduled_time=last.scheduled_time, finished_at=last.finished_at
            ),
        )


class TaskPage(BaseModel):
    items: list[TaskListed]
    next_cursor: str | None


class TaskType(BaseModel):
    name: str
    description: str
    payload_schema: dict[str, Any]
    module: str | None = None  # a Python handler's module; None for a built-in type


def task_types(handlers: Sequence[Registered] = ()) -> list[TaskType]:
    """The built-in types, then the registered handlers (`module` names where each is defined)."""
    return [
        TaskType(name=t.name, description=t.description, payload_schema=t.payload_model.model_json_schema())
        for t in BUILTIN.values()
    ] + [
        TaskType(name=h.name, description=h.description, payload_schema=h.payload_schema, module=h.module)
        for h in handlers
    ]


class RunPublic(BaseModel):
    id: int
    task_id: int
    scheduled_time: datetime
    status: str
    attempt: int
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    error: str | None
    created_by: str | None


class AttemptPublic(BaseModel):
    """One result version: each attempt of a run adds one."""

    attempt: int
    status: str
    started_at: datetime | None
    finished_at: datetime
    duration_ms: float | None
    worker: str | None
    result: Any
    error: str | None


class TransitionPublic(BaseModel):
    from_status: str | None
    to_status: str
    attempt: int
    worker: str | None
    at: datetime


class RunDetail(RunPublic):
    attempts: list[AttemptPublic]
    transitions: list[TransitionPublic]


class BulkItem(BaseModel):
    id: int
    name: str


class BulkCreated(BaseModel):
    created: int
    tasks: list[BulkItem]


class SecretsToCompare(BaseModel):
    """Secret values to compare with a task's stored ones (`taskmill apply`, for a file that rotates a secret)."""

    model_config = ConfigDict(extra="forbid")
    secrets: SecretMap = Field(max_length=50)


class SecretsChanged(BaseModel):
    changed: list[str]  # the names whose value is not the stored one (or which the task does not have)


class StepSecretsToCompare(BaseModel):
    """Secret values per step of a workflow, to compare with the stored ones."""

    model_config = ConfigDict(extra="forbid")
    tasks: dict[str, SecretMap] = Field(max_length=1000)


class StepSecretsChanged(BaseModel):
    changed: dict[str, list[str]]  # by step: the names whose value is not the stored one
