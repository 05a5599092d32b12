from __future__ import annotations

import time
from typing import Any

import asyncpg
import httpx

from tests.api.conftest import bearer

WRITE = bearer()


def tasks(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [{"name": f"{prefix}-{i}", "type": "noop", "payload": {"i": i}} for i in range(n)]


async def test_ten_thousand_tasks_are_created_in_one_call_with_their_runs(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = tasks(10_000)
    body[0]["schedule"] = {"kind": "cron", "cron": "0 * * * *"}
    started = time.perf_counter()
    response = await client.post("/tasks/bulk", json=body, headers=WRITE)
    took = time.perf_counter() - started
    assert response.status_code == 201, response.text[:500]
    created = response.json()
    assert created["created"] == 10_000
    assert [t["name"] for t in created["tasks"][:2]] == ["t-0", "t-1"]
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE created_by = 'alice'") == 10_000
    assert await db.fetchval("SELECT count(*) FROM task_schedule") == 9_999  # the cron task waits for the scheduler
    print(f"\n10,000 tasks through POST /tasks/bulk in {took:.2f} s (client, validation, insert)")


async def test_one_bad_item_refuses_the_whole_batch_and_names_it(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = tasks(5)
    body[3]["schedule"] = {"kind": "cron", "cron": "* * *"}
    body[4]["name"] = "t-1"
    response = await client.post("/tasks/bulk", json=body, headers=WRITE)
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert "3.schedule.cron" in fields
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0
    body[3]["schedule"] = {"kind": "immediate"}
    repeated = await client.post("/tasks/bulk", json=body, headers=WRITE)
    assert repeated.status_code == 422
    assert repeated.json()["errors"] == [{"field": "4.name", "reason": "repeats the name of item 1"}]


async def test_a_name_that_exists_refuses_the_batch_with_409(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    assert (await client.post("/tasks", json={"name": "t-2", "type": "noop"}, headers=WRITE)).status_code == 201
    response = await client.post("/tasks/bulk", json=tasks(5), headers=WRITE)
    assert response.status_code == 409
    assert "'t-2'" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM tasks") == 1


async def test_an_empty_or_oversized_batch_is_refused(client: httpx.AsyncClient) -> None:
    assert (await client.post("/tasks/bulk", json=[], headers=WRITE)).status_code == 422
    assert (await client.post("/tasks/bulk", json=tasks(10_001), headers=WRITE)).status_code == 422
