"""One-off task rows (`origin`): what `defer`, the submit queue and spawning runs make for a single run is left out of
GET /tasks unless asked for; what people and deployments make is listed as before."""

from __future__ import annotations

import asyncpg
import httpx

from taskmill.client import defer
from taskmill.spawn import Parent, SpawnSpec, spawn
from taskmill.store.runs import StartRequest, start_runs
from taskmill.submit import submit
from tests.api.conftest import bearer


async def _names(client: httpx.AsyncClient, query: str = "") -> list[str]:
    listed = await client.get(f"/tasks{query}", headers=bearer("tasks:read"))
    assert listed.status_code == 200, listed.text
    return [t["name"] for t in listed.json()["items"]]


async def test_the_listing_shows_what_people_made_and_the_one_off_rows_only_when_asked(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    made = await client.post("/tasks", json={"name": "by-hand", "type": "noop"}, headers=bearer())
    assert made.status_code == 201 and made.json()["origin"] == "api"
    deferred_run = await defer(db, "noop", {}, idempotency_key="k1")
    submitted_run = await submit(db, b'{"v": 1, "type": "noop", "idempotency_key": "k2"}')
    parent_task = made.json()["id"]
    parent = await db.fetchrow("SELECT id, scheduled_time FROM task_schedule WHERE task_id = $1", parent_task)
    assert parent is not None
    await start_runs(db, "w", [StartRequest(parent["id"], 1, 60, parent["scheduled_time"])])
    async with db.transaction():
        await spawn(db, Parent(parent["id"], parent_task, parent["scheduled_time"], 10, 10), [SpawnSpec(type="noop")])

    assert await _names(client) == ["by-hand"]
    assert await _names(client, "?origin=defer") == ["defer:noop:k1"]
    assert await _names(client, "?origin=submit") == ["defer:noop:k2"]
    assert await _names(client, "?origin=spawn") == [f"spawn:{parent['id']}:1"]
    assert len(await _names(client, "?origin=api&origin=defer&origin=submit&origin=spawn")) == 4
    origins = await db.fetch(
        "SELECT t.origin FROM task_schedule s JOIN tasks t ON t.id = s.task_id WHERE s.id = ANY($1::bigint[]) "
        "ORDER BY s.id",
        [deferred_run, submitted_run],
    )
    assert [r["origin"] for r in origins] == ["defer", "submit"]
    one = (await client.get("/tasks?origin=defer", headers=bearer("tasks:read"))).json()["items"][0]
    assert (await client.get(f"/tasks/{one['id']}", headers=bearer("tasks:read"))).json()["origin"] == "defer"


async def test_an_unknown_origin_is_refused_naming_the_field(client: httpx.AsyncClient) -> None:
    refused = await client.get("/tasks?origin=elsewhere", headers=bearer("tasks:read"))
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "origin.0", refused.text
