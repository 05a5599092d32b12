"""SQL-injection strings in every text field and query parameter: stored byte-exact where the field takes free text
(and read back equal), refused with 422 where it does not, and the schema intact afterwards: the same tables and
columns, and no row counts changed but by the tasks a test created. One API and database serve the module."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
import pytest_asyncio

from tests.api.conftest import Api, bearer, module_api

pytestmark = pytest.mark.asyncio(loop_scope="module")

WRITE = bearer()

INJECTIONS = [
    "'; DROP TABLE tasks; --",
    "' OR 1=1 --",
    "' OR '1'='1",
    '"; DELETE FROM task_schedule; --',
    "'); TRUNCATE run_audit; --",
    "1; SELECT pg_sleep(10)",
    "'||(SELECT version())||'",
    "$1",
    "$1::text); DROP TABLE tasks; --",
    "$$; DROP TABLE tasks; $$",
    "$tag$ x $tag$",
    "\\x27",
    "\\'; DROP TABLE tasks; --",
    "E'\\x27'",
    "\\",
    "\\\\",
    "\\u0000",  # a backslash and five characters, not NUL
    "%",
    "_",
    "%_%",
    "%' OR name LIKE '%",
    "\u2018\u2019\u201c\u201d \u02bc OR \u02bc1\u02bc=\u02bc1",  # unicode quotes
    "\uff07; DROP TABLE tasks; --",  # FULLWIDTH APOSTROPHE
    "/* */ --",
    "\ufeffBOM",
    "\U0001f600 emoji",
    "\r\n\t",
]
IDS = [f"i{i}" for i in range(len(INJECTIONS))]
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
LONG = "'; DROP TABLE tasks; -- %_\\" * 4000  # 108,000 characters


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(template_db: str) -> AsyncIterator[Api]:
    async with module_api(template_db) as made:
        yield made


async def _schema(db: asyncpg.Connection) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    columns = await db.fetch(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY 1, 2"
    )
    counts = {}
    for table in sorted({c["table_name"] for c in columns}):
        counts[table] = await db.fetchval(f'SELECT count(*) FROM "{table}"')
    return [tuple(c) for c in columns], counts


@asynccontextmanager
async def schema_intact(db: asyncpg.Connection, tasks_added: int = 0) -> AsyncIterator[None]:
    columns, counts = await _schema(db)
    yield
    columns_after, counts_after = await _schema(db)
    assert columns_after == columns
    counts["tasks"] += tasks_added
    assert counts_after == counts


async def create(api: Api, body: dict[str, Any], headers: dict[str, str] = WRITE) -> dict[str, Any]:
    # Paused and recurring: nothing but the task's row is made (a paused one-off would keep its run, held).
    paused = {"active": False, "schedule": {"kind": "interval", "every_seconds": 3600}}
    response = await api.client.post("/tasks", json={**paused, **body}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    read = await api.client.get(f"/tasks/{created['id']}", headers=WRITE)
    assert read.json() == created
    return created


@pytest.mark.parametrize("text", INJECTIONS, ids=IDS)
async def test_a_name_is_stored_byte_exact_and_found_by_its_own_prefix(api: Api, text: str) -> None:
    name = f"name {text}"
    async with schema_intact(api.db, tasks_added=1):
        created = await create(api, {"name": name, "type": "noop"})
        assert created["name"] == name
        assert await api.db.fetchval("SELECT name FROM tasks WHERE id = $1", created["id"]) == name
        found = await api.client.get("/tasks", params={"name_prefix": name, "limit": 500}, headers=WRITE)
        literal = [
            r["id"] for r in await api.db.fetch("SELECT id, name FROM tasks ORDER BY id") if r["name"].startswith(name)
        ]
        assert created["id"] in literal
        assert [t["id"] for t in found.json()["items"]] == literal


@pytest.mark.parametrize("text", INJECTIONS, ids=IDS)
async def test_payload_keys_values_and_http_headers_are_stored_byte_exact(api: Api, text: str) -> None:
    payload = {
        "method": "POST",
        "url": f"http://127.0.0.1:9/{quote(text)}",
        # Header names must be HTTP tokens and values free of CR/LF (refused at creation, see test_bad_input.py).
        "headers": {"X-Probe": text} if not {"\r", "\n"} & set(text) else {},
        "json": {text: [text, {"nested": text}]},
    }
    async with schema_intact(api.db, tasks_added=1):
        created = await create(api, {"name": f"payload {text}", "type": "http", "payload": payload})
        stored = await api.db.fetchval("SELECT payload FROM tasks WHERE id = $1", created["id"])
    assert stored == payload
    assert created["payload"] == payload


@pytest.mark.parametrize("text", [t for t in INJECTIONS if t.isprintable()])
async def test_a_token_subject_is_stored_byte_exact_as_the_creator(api: Api, text: str) -> None:
    async with schema_intact(api.db, tasks_added=1):
        created = await create(api, {"name": f"creator {text}", "type": "noop"}, bearer(sub=f"sub {text}"))
        stored = await api.db.fetchval("SELECT created_by FROM tasks WHERE id = $1", created["id"])
    assert created["created_by"] == stored == f"sub {text}"


async def test_long_injection_strings_are_stored_whole_or_refused_by_length(api: Api) -> None:
    async with schema_intact(api.db, tasks_added=1):
        created = await create(api, {"name": LONG[:200], "type": "noop", "payload": {LONG: LONG}})
        assert created["name"] == LONG[:200] and created["payload"] == {LONG: LONG}
        too_long = await api.client.post("/tasks", json={"name": LONG[:201], "type": "noop"}, headers=WRITE)
        assert too_long.status_code == 422 and too_long.json()["errors"][0]["field"] == "name"


def refused_fields(text: str) -> list[tuple[dict[str, Any], str]]:
    return [
        ({"type": text}, "type"),
        ({"schedule": {"kind": "cron", "cron": text}}, "schedule.cron"),
        ({"schedule": {"kind": "cron", "cron": f"0 0 * * * {text}"[:256]}}, "schedule.cron"),
        ({"schedule": {"kind": "cron", "cron": "* * * * *", "timezone": text}}, "schedule.timezone"),
        *([({"secrets": {text: "value"}}, f"secrets.{text}.[key]")] if not SECRET_NAME.fullmatch(text) else []),
    ]


@pytest.mark.parametrize("text", INJECTIONS, ids=IDS)
async def test_fields_that_take_no_free_text_refuse_it_with_422(api: Api, text: str) -> None:
    async with schema_intact(api.db):
        for fields, field in refused_fields(text):
            body = {"name": f"refused {text}", "type": "noop", **fields}
            response = await api.client.post("/tasks", json=body, headers=WRITE)
            assert response.status_code == 422, (fields, response.text)
            assert field in [e["field"] for e in response.json()["errors"]], response.json()


@pytest.mark.parametrize("text", [*INJECTIONS, LONG[:100]], ids=[*IDS, "long"])
async def test_query_parameters_match_literally_or_are_refused(api: Api, text: str) -> None:
    async with schema_intact(api.db):
        # Each filter on its own: no type is named like this, and the prefix matches exactly the names it starts.
        by_type = await api.client.get("/tasks", params={"type": text}, headers=WRITE)
        assert by_type.status_code == 200 and by_type.json()["items"] == []
        by_prefix = await api.client.get("/tasks", params={"name_prefix": text, "limit": 500}, headers=WRITE)
        literal = [
            r["id"] for r in await api.db.fetch("SELECT id, name FROM tasks ORDER BY id") if r["name"].startswith(text)
        ]
        assert by_prefix.status_code == 200 and [t["id"] for t in by_prefix.json()["items"]] == literal
        for params in ({"sort": text}, {"cursor": text}, {"limit": text}, {"active": text}):
            response = await api.client.get("/tasks", params=params, headers=WRITE)
            assert response.status_code == 422, (params, response.text)
            assert response.json()["errors"][0]["field"] == next(iter(params))
        for name in ("status", "since", "until", "before", "limit"):
            response = await api.client.get("/tasks/1/runs", params={name: text}, headers=WRITE)
            assert response.status_code == 422, (name, response.text)
            assert response.json()["errors"][0]["field"] == name
        for path in (f"/tasks/{quote(text, safe='')}", f"/runs/{quote(text, safe='')}"):
            response = await api.client.get(path, headers=WRITE)
            assert response.status_code in (404, 422), (path, response.text)


async def test_like_wildcards_in_name_prefix_match_only_themselves(api: Api) -> None:
    names = ["lit%", "lit%a", "lit_a", "litXa", "lit\\a", "lit\\%"]
    ids = {name: (await create(api, {"name": name, "type": "noop"}))["id"] for name in names}

    async def prefixed(prefix: str) -> list[str]:
        response = await api.client.get("/tasks", params={"name_prefix": prefix}, headers=WRITE)
        return sorted(t["name"] for t in response.json()["items"] if t["id"] in ids.values())

    assert await prefixed("lit%") == ["lit%", "lit%a"]
    assert await prefixed("lit_") == ["lit_a"]
    assert await prefixed("lit\\") == ["lit\\%", "lit\\a"]
    assert await prefixed("lit\\%") == ["lit\\%"]
    assert await prefixed("lit") == sorted(names)
