from __future__ import annotations

import asyncpg
import httpx

import distributor.service
import processor.service
import scheduler.service
from taskmill.settings import Settings
from tests.api.conftest import bearer

WRITE = bearer()
READ = bearer("tasks:read")


async def create(client: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await client.post("/tasks", json={"type": "noop", **body}, headers=WRITE)
    assert response.status_code == 201, response.text
    task: dict[str, object] = response.json()
    return task


async def future_minutes(db: asyncpg.Connection, task_id: object) -> set[int]:
    rows = await db.fetch(
        "SELECT scheduled_time FROM task_schedule WHERE task_id = $1 AND status = 'scheduled' "
        "AND scheduled_time > now()",
        task_id,
    )
    return {r[0].minute for r in rows}


async def test_an_edit_replaces_future_runs_but_keeps_history(
    client: httpx.AsyncClient, db: asyncpg.Connection, api_settings: Settings
) -> None:
    task = await create(client, name="edited", schedule={"kind": "cron", "cron": "* * * * *"})
    await scheduler.service.run(api_settings, until_idle=True)
    assert len(await future_minutes(db, task["id"])) > 5
    past = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() - interval '1 hour') RETURNING id",
        task["id"],
    )
    await db.execute("UPDATE task_schedule SET status = 'skipped' WHERE id = $1", past)

    body = {"name": "edited", "type": "noop", "schedule": {"kind": "cron", "cron": "*/15 * * * *"}}
    response = await client.put(f"/tasks/{task['id']}", json=body, headers=WRITE)
    assert response.status_code == 200, response.text
    assert response.json()["schedule"]["cron"] == "*/15 * * * *"
    await scheduler.service.run(api_settings, until_idle=True)
    assert await future_minutes(db, task["id"]) <= {0, 15, 30, 45}
    assert await db.fetchval("SELECT status::text FROM task_schedule WHERE id = $1", past) == "skipped"


async def test_inactive_drops_future_runs_and_active_brings_them_back(
    client: httpx.AsyncClient, db: asyncpg.Connection, api_settings: Settings
) -> None:
    task = await create(client, name="paused", schedule={"kind": "cron", "cron": "* * * * *"})
    await scheduler.service.run(api_settings, until_idle=True)
    off = await client.put(f"/tasks/{task['id']}/inactive", headers=WRITE)
    assert off.status_code == 200 and off.json()["active"] is False
    await scheduler.service.run(api_settings, until_idle=True)
    assert await future_minutes(db, task["id"]) == set()
    on = await client.put(f"/tasks/{task['id']}/active", headers=WRITE)
    assert on.status_code == 200 and on.json()["active"] is True
    await scheduler.service.run(api_settings, until_idle=True)
    assert len(await future_minutes(db, task["id"])) > 5
    assert (await client.put("/tasks/999999/inactive", headers=WRITE)).status_code == 404


async def test_delete_cancels_what_has_not_run_keeps_history_and_frees_the_name(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    task = await create(client, name="doomed")
    assert (await client.delete(f"/tasks/{task['id']}", headers=WRITE)).status_code == 204
    assert (await client.get(f"/tasks/{task['id']}", headers=READ)).status_code == 404
    assert await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", task["id"]) == "cancelled"
    runs = await client.get(f"/tasks/{task['id']}/runs", headers=READ)
    assert [r["status"] for r in runs.json()] == ["cancelled"]
    await create(client, name="doomed")
    assert (await client.delete(f"/tasks/{task['id']}", headers=WRITE)).status_code == 404


async def test_invoke_runs_a_task_now_and_the_run_shows_its_attempts_and_history(
    client: httpx.AsyncClient, db: asyncpg.Connection, api_settings: Settings
) -> None:
    task = await create(
        client, name="on-demand", payload={"n": 7}, schedule={"kind": "interval", "every_seconds": 86400}
    )
    invoked = await client.post(f"/tasks/{task['id']}/invoke", headers=bearer(sub="bob"))
    assert invoked.status_code == 201
    run = invoked.json()
    assert (run["status"], run["created_by"], run["attempt"]) == ("scheduled", "bob", 0)
    await distributor.service.run(api_settings, until_idle=True)
    await processor.service.run(api_settings, until_idle=True)
    detail = (await client.get(f"/runs/{run['id']}", headers=READ)).json()
    assert (detail["status"], detail["attempt"], detail["worker"] is not None) == ("succeeded", 1, True)
    assert [(a["attempt"], a["status"], a["result"]) for a in detail["attempts"]] == [(1, "succeeded", {"n": 7})]
    assert [(t["from_status"], t["to_status"]) for t in detail["transitions"]] == [
        (None, "scheduled"),
        ("scheduled", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    listed = await client.get(f"/tasks/{task['id']}/runs", params={"status": "succeeded"}, headers=READ)
    assert [r["id"] for r in listed.json()] == [run["id"]]
    assert (await client.get(f"/tasks/{task['id']}/runs", params={"status": "bogus"}, headers=READ)).status_code == 422


async def test_a_run_not_yet_started_can_be_cancelled_once(client: httpx.AsyncClient) -> None:
    task = await create(client, name="cancel-me")
    run = (await client.get(f"/tasks/{task['id']}/runs", headers=READ)).json()[0]
    cancelled = await client.post(f"/runs/{run['id']}/cancel", headers=WRITE)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = await client.post(f"/runs/{run['id']}/cancel", headers=WRITE)
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert (await client.post("/runs/999999/cancel", headers=WRITE)).status_code == 404
    assert (await client.get("/runs/999999", headers=READ)).status_code == 404
