"""GET /runs: recent runs across all tasks, newest first, filtered by status and task, in keyset pages."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from taskmill.models import Schedule
from tests.api.conftest import bearer
from tests.helpers import new_task

READ = bearer("tasks:read")
YEARLY = Schedule(kind="cron", cron="0 0 1 1 *")  # no run of its own within the test


async def add_runs(db: asyncpg.Connection, task_id: int, runs: list[tuple[str, str]]) -> list[int]:
    """Runs of `task_id`: (offset from now as an interval, status), one INSERT."""
    rows = await db.fetch(
        """INSERT INTO task_schedule (task_id, scheduled_time, status)
           SELECT $1, now() + o::interval, s::run_status FROM unnest($2::text[], $3::text[]) AS r(o, s)
           RETURNING id""",
        task_id,
        [o for o, _ in runs],
        [s for _, s in runs],
    )
    return [r["id"] for r in rows]


@pytest.fixture
async def history(db: asyncpg.Connection) -> dict[str, Any]:
    """Two tasks whose runs interleave; two of them share a scheduled time; one run is still to come."""
    a = await new_task(db, "alpha <script>alert(1)</script>", schedule=YEARLY)
    b = await new_task(db, "beta", schedule=YEARLY)
    async with db.transaction():  # one now(): the two runs 10 minutes ago share their time exactly
        a_runs = await add_runs(
            db, a.id, [("-50 minutes", "succeeded"), ("-30 minutes", "failed"), ("-10 minutes", "succeeded")]
        )
        b_runs = await add_runs(
            db, b.id, [("-40 minutes", "dead"), ("-10 minutes", "succeeded"), ("+1 hour", "scheduled")]
        )
    return {"a": a, "b": b, "a_runs": a_runs, "b_runs": b_runs}


async def get_runs(client: httpx.AsyncClient, **query: Any) -> httpx.Response:
    return await client.get("/runs", params=query, headers=READ)


async def test_runs_come_newest_first_with_their_task_name_and_none_still_to_come(
    client: httpx.AsyncClient, history: dict[str, Any]
) -> None:
    response = await get_runs(client)
    assert response.status_code == 200, response.text
    page = response.json()
    a, b = history["a_runs"], history["b_runs"]
    # The two runs 10 minutes ago share their time: the higher id comes first.
    assert [r["id"] for r in page["items"]] == [b[1], a[2], a[1], b[0], a[0]]
    assert page["next_cursor"] is None
    tied = {r["id"]: r["scheduled_time"] for r in page["items"][:2]}
    assert tied[b[1]] == tied[a[2]]
    names = {r["id"]: r["task_name"] for r in page["items"]}
    assert names[a[0]] == "alpha <script>alert(1)</script>" and names[b[0]] == "beta"
    times = [datetime.fromisoformat(r["scheduled_time"]) for r in page["items"]]
    assert times == sorted(times, reverse=True)
    first = page["items"][0]
    assert {"status", "attempt", "task_id", "started_at", "finished_at", "worker", "error"} <= first.keys()


async def test_runs_filter_by_status_and_by_task(client: httpx.AsyncClient, history: dict[str, Any]) -> None:
    a, b = history["a_runs"], history["b_runs"]
    succeeded = (await get_runs(client, status="succeeded")).json()["items"]
    assert [r["id"] for r in succeeded] == [b[1], a[2], a[0]]
    of_b = (await get_runs(client, task_id=history["b"].id)).json()["items"]
    assert [r["id"] for r in of_b] == [b[1], b[0]]
    dead_of_a = (await get_runs(client, task_id=history["a"].id, status="dead")).json()
    assert dead_of_a == {"items": [], "next_cursor": None}


async def test_the_cursor_pages_through_every_run_once_in_order(
    client: httpx.AsyncClient, history: dict[str, Any]
) -> None:
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 2} | ({"before": before} if before else {})
        page = (await get_runs(client, **query)).json()
        seen += [r["id"] for r in page["items"]]
        pages += 1
        before = page["next_cursor"]
        if before is None:
            break
    a, b = history["a_runs"], history["b_runs"]
    assert seen == [b[1], a[2], a[1], b[0], a[0]]
    assert pages == 3
    # Filters and cursor together: the older succeeded runs after the first one (the cursor falls inside the tie).
    first = (await get_runs(client, status="succeeded", limit=1)).json()
    rest = (await get_runs(client, status="succeeded", before=first["next_cursor"])).json()
    assert [r["id"] for r in rest["items"]] == [a[2], a[0]]


async def test_an_empty_system_has_no_recent_runs(client: httpx.AsyncClient) -> None:
    assert (await get_runs(client)).json() == {"items": [], "next_cursor": None}


def cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"status": "finished"}, "status"),
        ({"task_id": 0}, "task_id"),
        ({"task_id": "x"}, "task_id"),
        ({"before": "not a cursor"}, "before"),
        ({"before": cursor('["2026-01-01T00:00:00", 5]')}, "before"),  # no offset
        ({"before": cursor('["yesterday", 5]')}, "before"),
        ({"before": cursor('["2026-01-01T00:00:00+00:00", -1]')}, "before"),
        ({"before": cursor("[1, 2, 3]")}, "before"),
    ],
)
async def test_bad_query_parameters_are_a_422_naming_them(
    client: httpx.AsyncClient, query: dict[str, Any], field: str
) -> None:
    response = await get_runs(client, **query)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_listing_runs_needs_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/runs")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/runs", headers=bearer("tasks:write"))).status_code == 403


async def test_a_cursor_from_a_page_stays_valid_as_new_runs_arrive(
    client: httpx.AsyncClient, db: asyncpg.Connection, history: dict[str, Any]
) -> None:
    first = (await get_runs(client, limit=2)).json()
    newer, older = await add_runs(db, history["a"].id, [("-1 minute", "succeeded"), ("-20 minutes", "succeeded")])
    rest = (await get_runs(client, before=first["next_cursor"], limit=10)).json()
    a, b = history["a_runs"], history["b_runs"]
    # The run newer than the cursor waits for the first page; the older one takes its place in time.
    assert [r["id"] for r in rest["items"]] == [older, a[1], b[0], a[0]]
    assert newer in [r["id"] for r in (await get_runs(client, limit=2)).json()["items"]]
