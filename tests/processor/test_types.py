"""Processors dedicated to task types (`taskmill processor --types`, SPEC P8): runs of their types go to them only,
every other type to the processors that serve every type; when the dedicated ones leave, their types go back."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest

import distributor.service
import processor.service
from taskmill.settings import Settings
from tests.api.conftest import SECRET, app_client
from tests.faults.harness import view_of
from tests.helpers import new_task, role_process, running, taskmill, wait_for_statuses
from tests.transports import BOTH


@pytest.fixture
async def noop_only(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[asyncio.subprocess.Process]:
    """`taskmill processor --types 'no*'`, once it is registered as dedicated to noop and takes work (the routing
    goes by both: taskmill/transport/routes.py)."""
    view = view_of(settings)(settings)
    await view.open()

    async def registered() -> bool:
        types: list[str] | None = await db.fetchval("SELECT types FROM processors WHERE types IS NOT NULL")
        return types == ["noop"] and await view.serving(types) > 0

    try:
        async with role_process(
            settings, "processor", "--types", "no*", ready=registered, what="the dedicated processor to take work"
        ) as proc:
            yield proc
    finally:
        await view.close()


async def _workers(db: asyncpg.Connection) -> dict[str, set[str]]:
    rows = await db.fetch(
        "SELECT t.type, s.worker FROM task_schedule s JOIN tasks t ON t.id = s.task_id WHERE s.status = 'succeeded'"
    )
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["type"], set()).add(row["worker"])
    return found


@BOTH
async def test_runs_of_a_dedicated_type_go_to_its_processors_only_and_back_when_they_leave(
    settings: Settings, db: asyncpg.Connection, noop_only: asyncio.subprocess.Process
) -> None:
    dedicated = f"{socket.gethostname()}:{noop_only.pid}"
    general = f"{socket.gethostname()}:{os.getpid()}"
    async with running(processor.service.run, settings), running(distributor.service.run, settings):
        for i in range(6):
            await new_task(db, f"n{i}", "noop")
            await new_task(db, f"s{i}", "sleep", {"ms": 10})
        await wait_for_statuses(db, {"succeeded": 12})
        assert await _workers(db) == {"noop": {dedicated}, "sleep": {general}}

        noop_only.terminate()  # it leaves: noop runs go to the processors that serve every type again
        await asyncio.wait_for(noop_only.wait(), 30)
        await asyncio.sleep(2.5)  # the publishers' view of the dedicated processors is at most 2 s old
        await new_task(db, "after", "noop")
        await wait_for_statuses(db, {"succeeded": 13})
    after = await db.fetchval(
        "SELECT s.worker FROM task_schedule s JOIN tasks t ON t.id = s.task_id WHERE t.name = 'after'"
    )
    assert after == general


def test_types_that_match_no_task_type_stop_the_processor_with_one_line(settings: Settings) -> None:
    done = taskmill("processor", "--types", "nothing.*", DATABASE_URL=settings.database_url)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "taskmill processor: --types: 'nothing.*' matches no task type; known: command, http, noop, sleep"
    )


async def test_a_processor_whose_types_overlap_another_dedicated_ones_is_refused(
    settings: Settings, noop_only: asyncio.subprocess.Process
) -> None:
    env = {"DATABASE_URL": settings.database_url, "AMQP_URL": settings.amqp_url}
    done = await asyncio.to_thread(taskmill, "processor", "--types", "noop,sleep", **env)
    assert done.returncode == 2
    worker = f"{socket.gethostname()}:{noop_only.pid}"
    assert done.stderr.strip() == (
        f"taskmill processor: --types: noop is already served by processor {worker}, dedicated to noop: "
        "processors dedicated to a type must share one --types"
    )


async def test_health_names_a_built_in_type_only_dedicated_processors_are_left_to_not_serve(
    settings: Settings, db: asyncpg.Connection, noop_only: asyncio.subprocess.Process
) -> None:
    await new_task(db, "a-noop", "noop")
    await new_task(db, "a-sleep", "sleep", {"ms": 1})
    async with app_client(settings.model_copy(update={"jwt_secret": SECRET})) as api:
        health = (await api.get("/health")).json()
    [listed] = health["processors"]
    assert (listed["worker"], listed["types"], listed["handlers"]) == (
        f"{socket.gethostname()}:{noop_only.pid}",
        ["noop"],
        [],
    )
    assert health["unserved_types"] == [
        {"type": "sleep", "due_runs": 1, "reason": "no live processor serves this type"},
    ]
