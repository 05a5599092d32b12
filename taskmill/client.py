"""Scheduling from Python inside the caller's own transaction: if the caller rolls back, nothing was scheduled.

async with conn.transaction():
    await register_attendee(conn, ...)
    await schedule(conn, TaskCreate(name=f"reminder-{id}", type="http", payload=...,
                                    schedule=Schedule(kind="once", at=starts_at - timedelta(days=1))))
"""

from __future__ import annotations

from taskmill.db import Connection
from taskmill.models import Task, TaskCreate
from taskmill.store.tasks import create_task


async def schedule(conn: Connection, task: TaskCreate, *, created_by: str | None = None) -> Task:
    """Creates the task (and its run, for immediate and once tasks) on the caller's connection. Inside the caller's
    transaction this is a savepoint of it; the distributor sees the run only once the caller commits."""
    return await create_task(conn, task, created_by=created_by)
