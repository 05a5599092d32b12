"""Command tasks run programs on the processors' hosts: creating or editing one needs tasks:command (admin implies
it) beside tasks:write; tasks:write alone gets 403 with the reason, and nothing is stored."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.conftest import bearer

COMMAND = {"name": "c", "type": "command", "payload": {"argv": ["true"]}}
NOOP = {"name": "n", "type": "noop"}
WRITE = "tasks:read tasks:write"
REASON = "creating or editing a command task needs the scope 'tasks:command'"


async def _post(client: httpx.AsyncClient, body: Any, scope: str, path: str = "/tasks") -> httpx.Response:
    return await client.post(path, json=body, headers=bearer(scope))


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        (WRITE, False),
        ("tasks:command", False),  # the command scope does not stand in for tasks:write
        (f"{WRITE} tasks:command", True),
        ("admin", True),
    ],
)
async def test_creating_a_command_task_needs_tasks_command_with_tasks_write(
    client: httpx.AsyncClient, db: asyncpg.Connection, scope: str, allowed: bool
) -> None:
    one = await _post(client, COMMAND, scope)
    many = await _post(client, [NOOP, COMMAND | {"name": "c2"}], scope, "/tasks/bulk")
    if allowed:
        assert (one.status_code, many.status_code) == (201, 201)
        assert await db.fetchval("SELECT count(*) FROM tasks") == 3
        return
    assert (one.status_code, many.status_code) == (403, 403)
    if "tasks:write" in scope:
        assert one.json()["detail"] == many.json()["detail"] == REASON
        assert 'scope="tasks:command"' in one.headers["www-authenticate"]
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0  # the bulk call stored none, not even the noop


async def test_editing_into_or_out_of_a_command_task_needs_it_and_other_writes_do_not(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    command = (await _post(client, COMMAND, "admin")).json()
    noop = (await _post(client, NOOP, WRITE)).json()
    into = await client.put(f"/tasks/{noop['id']}", json=COMMAND | {"name": "n"}, headers=bearer(WRITE))
    out_of = await client.put(f"/tasks/{command['id']}", json=NOOP | {"name": "c"}, headers=bearer(WRITE))
    assert (into.status_code, out_of.status_code) == (403, 403)
    assert into.json()["detail"] == out_of.json()["detail"] == REASON
    types = {r["id"]: r["type"] for r in await db.fetch("SELECT id, type FROM tasks")}
    assert types == {command["id"]: "command", noop["id"]: "noop"}
    # Pausing, resuming, invoking and deleting change no program: tasks:write is enough.
    for method, path in [("PUT", "inactive"), ("PUT", "active"), ("POST", "invoke")]:
        response = await client.request(method, f"/tasks/{command['id']}/{path}", headers=bearer(WRITE))
        assert response.status_code in (200, 201), (path, response.text)
    assert (await client.delete(f"/tasks/{command['id']}", headers=bearer(WRITE))).status_code == 204
    edited = await client.put(
        f"/tasks/{noop['id']}", json=COMMAND | {"name": "n"}, headers=bearer(f"{WRITE} tasks:command")
    )
    assert edited.status_code == 200 and edited.json()["type"] == "command"


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("tasks:read", {"may_read": True, "may_write": False, "may_write_commands": False, "admin": False}),
        (WRITE, {"may_read": True, "may_write": True, "may_write_commands": False, "admin": False}),
        (f"{WRITE} tasks:command", {"may_read": True, "may_write": True, "may_write_commands": True, "admin": False}),
        ("admin", {"may_read": True, "may_write": True, "may_write_commands": True, "admin": True}),
    ],
)
async def test_me_says_what_the_token_may_do(client: httpx.AsyncClient, scope: str, expected: dict[str, bool]) -> None:
    response = await client.get("/me", headers=bearer(scope, sub="carol"))
    assert response.status_code == 200
    body = response.json()
    assert body["subject"] == "carol" and body["scopes"] == sorted(scope.split())
    assert {k: body[k] for k in expected} == expected
    assert (await client.get("/me")).status_code == 401
