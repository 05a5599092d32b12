from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from api.app import create_app
from taskmill.settings import Settings
from tests.api.conftest import bearer


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/tasks", json=body, headers=bearer())


async def test_creating_an_immediate_task_returns_it_and_schedules_its_run(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await post(client, {"name": "hello", "type": "noop", "payload": {"x": 1}})
    assert response.status_code == 201, response.text
    task = response.json()
    assert (task["name"], task["type"], task["payload"], task["created_by"]) == ("hello", "noop", {"x": 1}, "alice")
    assert task["schedule"]["kind"] == "immediate"
    run = await db.fetchrow("SELECT status::text, created_by FROM task_schedule WHERE task_id = $1", task["id"])
    assert run is not None and tuple(run) == ("scheduled", "alice")


async def test_a_cron_task_is_created_and_read_back(client: httpx.AsyncClient) -> None:
    schedule = {"kind": "cron", "cron": "*/5 * * * *", "timezone": "Europe/Paris"}
    created = await post(client, {"name": "every-5", "type": "sleep", "payload": {"ms": 10}, "schedule": schedule})
    assert created.status_code == 201, created.text
    fetched = await client.get(f"/tasks/{created.json()['id']}", headers=bearer("tasks:read"))
    assert fetched.status_code == 200
    assert fetched.json() == created.json()
    assert fetched.json()["schedule"]["cron"] == "*/5 * * * *"


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"name": "t", "type": "nope"}, "type", "unknown task type 'nope'"),
        ({"name": "t", "type": "sleep", "payload": {"ms": "soon"}}, "payload", "ms: Input should be a valid integer"),
        (
            {"name": "t", "type": "noop", "schedule": {"kind": "cron", "cron": "61 * * * *"}},
            "schedule.cron",
            "invalid cron expression",
        ),
        (
            {"name": "t", "type": "noop", "schedule": {"kind": "cron", "cron": "0 0 30 2 *"}},
            "schedule.cron",
            "never fires",
        ),
        (
            {"name": "t", "type": "noop", "schedule": {"kind": "cron", "cron": "* * * * *", "timezone": "Mars/Base"}},
            "schedule.timezone",
            "unknown timezone",
        ),
        ({"name": "t", "type": "noop", "schedule": {"kind": "cron"}}, "schedule", "needs `cron`"),
        ({"name": "", "type": "noop"}, "name", "at least 1 character"),
        (
            {"name": "t", "type": "noop", "timeout_seconds": 31},
            "timeout_seconds",
            "more than this installation allows (30 s",
        ),
        ({"name": "t", "type": "noop", "surprise": 1}, "surprise", "Extra inputs are not permitted"),
    ],
)
async def test_bad_input_gets_422_naming_the_field_and_the_reason(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: dict[str, Any], field: str, reason: str
) -> None:
    response = await post(client, body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert any(e["field"] == field and reason in e["reason"] for e in problem["errors"]), problem
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0


async def test_a_one_off_time_long_past_is_refused_and_one_just_past_runs_at_once(client: httpx.AsyncClient) -> None:
    long_ago = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    refused = await post(client, {"name": "late", "type": "noop", "schedule": {"kind": "once", "at": long_ago}})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "schedule.at"
    just_now = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    accepted = await post(client, {"name": "now", "type": "noop", "schedule": {"kind": "once", "at": just_now}})
    assert accepted.status_code == 201


async def test_a_duplicate_name_is_a_conflict(client: httpx.AsyncClient) -> None:
    assert (await post(client, {"name": "twin", "type": "noop"})).status_code == 201
    second = await post(client, {"name": "twin", "type": "noop"})
    assert second.status_code == 409
    assert "twin" in second.json()["detail"]


async def test_an_unknown_task_is_404_problem(client: httpx.AsyncClient) -> None:
    for path in ("/tasks/999999", f"/tasks/{2**63 - 1}"):
        response = await client.get(path, headers=bearer("tasks:read"))
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get(f"/tasks/{2**70}", headers=bearer("tasks:read"))).status_code == 422
    assert (await client.get("/tasks/abc", headers=bearer("tasks:read"))).status_code == 422


async def test_tasks_are_listed_with_filters_and_a_cursor(client: httpx.AsyncClient) -> None:
    for i in range(5):
        assert (await post(client, {"name": f"batch-{i}", "type": "noop"})).status_code == 201
    assert (await post(client, {"name": "other", "type": "sleep", "payload": {"ms": 1}})).status_code == 201
    read = bearer("tasks:read")
    first = (await client.get("/tasks", params={"name_prefix": "batch-", "limit": 3}, headers=read)).json()
    assert [t["name"] for t in first["items"]] == ["batch-0", "batch-1", "batch-2"]
    rest = await client.get("/tasks", params={"name_prefix": "batch-", "cursor": first["next_cursor"]}, headers=read)
    assert [t["name"] for t in rest.json()["items"]] == ["batch-3", "batch-4"]
    assert rest.json()["next_cursor"] is None
    sleeps = (await client.get("/tasks", params={"type": "sleep"}, headers=read)).json()
    assert [t["name"] for t in sleeps["items"]] == ["other"]


async def test_task_types_carry_their_payload_schema(client: httpx.AsyncClient) -> None:
    response = await client.get("/task-types", headers=bearer("tasks:read"))
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()}
    assert set(types) == {"noop", "sleep", "http", "command"}
    assert types["sleep"]["payload_schema"]["required"] == ["ms"]


async def test_health_needs_no_token_and_names_each_dependency(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "transport": "amqp",
        "checks": {"database": True, "broker": True},
        "processors": [],
        "unserved_types": [],
    }


async def test_metrics_show_the_due_backlog_in_prometheus_text(client: httpx.AsyncClient) -> None:
    for i in range(3):
        assert (await post(client, {"name": f"due-{i}", "type": "noop"})).status_code == 201
    assert (await client.get("/metrics")).status_code == 401
    response = await client.get("/metrics", headers=bearer("tasks:read"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "taskmill_due_backlog_runs 3.0" in response.text.splitlines()


async def test_tasks_sort_by_name_descending_page_by_page(client: httpx.AsyncClient) -> None:
    for name in ("b", "d", "a", "e", "c"):
        assert (await post(client, {"name": name, "type": "noop"})).status_code == 201
    read = bearer("tasks:read")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"sort": "-name", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/tasks", params=params, headers=read)).json()
        seen += [t["name"] for t in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == ["e", "d", "c", "b", "a"]
    by_time = (await client.get("/tasks", params={"sort": "created_at", "limit": 2}, headers=read)).json()
    following = await client.get(
        "/tasks", params={"sort": "created_at", "cursor": by_time["next_cursor"]}, headers=read
    )
    assert [t["name"] for t in by_time["items"] + following.json()["items"]] == ["b", "d", "a", "e", "c"]


async def test_a_forged_or_mismatched_cursor_is_422(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await post(client, {"name": f"n{_}", "type": "noop"})
    read = bearer("tasks:read")
    by_name = (await client.get("/tasks", params={"sort": "name", "limit": 1}, headers=read)).json()["next_cursor"]
    for params in ({"cursor": "garbage"}, {"sort": "created_at", "cursor": by_name}, {"sort": "sideways"}):
        response = await client.get("/tasks", params=params, headers=read)
        assert response.status_code == 422, params


async def test_health_answers_503_naming_what_is_down(api_settings: Settings) -> None:
    app = create_app(api_settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        await app.state.broker.close()
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json() == {
            "status": "down",
            "transport": "amqp",
            "checks": {"database": True, "broker": False},
            "processors": [],
            "unserved_types": [],
        }
        await app.state.pool.close()
        assert (await client.get("/health")).json()["checks"] == {"database": False, "broker": False}


async def test_health_lists_the_processors_heard_from_lately_with_their_command_isolation(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO processors (worker, seen_at, command_isolation) VALUES "
        "('host-a:1', now(), 'namespaces (bubblewrap 0.11.0): pid, mount, ipc, uts; ...'), "
        "('host-b:2', now() - interval '5 s', 'refusing command runs: no bubblewrap'), "
        "('host-c:3', now() - interval '10 min', 'none: gone quiet')"
    )
    listed = (await client.get("/health")).json()["processors"]
    assert [(p["worker"], p["command_isolation"].split(":")[0]) for p in listed] == [
        ("host-a:1", "namespaces (bubblewrap 0.11.0)"),
        ("host-b:2", "refusing command runs"),
    ]


async def test_an_edit_of_a_once_task_to_another_time_replaces_its_run_but_keeps_one_asked_for_now(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # The one-off's own run is replaced; a run someone asked for (invoke, the submit queue) is not the one-off's.
    first, later = (datetime.now(UTC) + timedelta(hours=h) for h in (1, 2))
    body = {"name": "report", "type": "noop", "schedule": {"kind": "once", "at": first.isoformat()}}
    task = (await post(client, body)).json()
    invoked = await client.post(f"/tasks/{task['id']}/invoke", headers=bearer())
    assert invoked.status_code == 201, invoked.text
    body["schedule"]["at"] = later.isoformat()  # type: ignore[index]
    edited = await client.put(f"/tasks/{task['id']}", json=body, headers=bearer())
    assert edited.status_code == 200, edited.text
    runs = await db.fetch("SELECT id, scheduled_time FROM task_schedule WHERE task_id = $1 ORDER BY 2", task["id"])
    assert runs[0]["id"] == invoked.json()["id"]
    assert [r["scheduled_time"] for r in runs][1:] == [later]


async def test_a_once_task_made_in_bulk_whose_time_passed_unclaimed_has_one_run_after_an_edit_to_another_time(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # No distributor here: the run falls due and stays scheduled, as while the distributors are down. It is the
    # one-off's own run however the task was made, so the edit replaces it.
    soon, later = datetime.now(UTC) + timedelta(seconds=0.5), datetime.now(UTC) + timedelta(hours=1)
    body = {"name": "report", "type": "noop", "schedule": {"kind": "once", "at": soon.isoformat()}}
    made = await client.post("/tasks/bulk", json=[body], headers=bearer())
    assert made.status_code == 201, made.text
    [task] = made.json()["tasks"]
    await asyncio.sleep(0.6)
    body["schedule"]["at"] = later.isoformat()  # type: ignore[index]
    edited = await client.put(f"/tasks/{task['id']}", json=body, headers=bearer())
    assert edited.status_code == 200, edited.text
    runs = await db.fetch("SELECT scheduled_time FROM task_schedule WHERE task_id = $1", task["id"])
    assert [r["scheduled_time"] for r in runs] == [later]
