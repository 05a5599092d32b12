"""Subtasks end to end: children spawn their own to any depth and their parents wait for them, map/reduce over a
hundred children, spawns from http answers and command spawn files, limits, and a parent that runs twice
spawning nothing twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx

from tests.api.conftest import bearer
from tests.faults.harness import Stack
from tests.helpers import wait_until
from tests.transports import BOTH
from tests.workflows.conftest import FLOWS, ended_run, processors, registered

COMMAND = bearer("tasks:read tasks:write tasks:command")


async def _task(api: httpx.AsyncClient, name: str, type: str, payload: dict[str, Any], **fields: Any) -> int:
    created = await api.post("/tasks", json={"name": name, "type": type, "payload": payload, **fields}, headers=COMMAND)
    assert created.status_code == 201, created.text
    task_id: int = created.json()["id"]
    return task_id


async def _run_of(db: asyncpg.Connection, task_id: int) -> int:
    run_id: int = await db.fetchval("SELECT id FROM task_schedule WHERE task_id = $1", task_id)
    return run_id


async def _descendants(db: asyncpg.Connection, run_id: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        """
        WITH RECURSIVE tree AS (
            SELECT id, parent_id, status::text, started_at, finished_at, error, 1 AS level
            FROM task_schedule WHERE parent_id = $1
            UNION ALL
            SELECT s.id, s.parent_id, s.status::text, s.started_at, s.finished_at, s.error, tree.level + 1
            FROM task_schedule s JOIN tree ON s.parent_id = tree.id
        )
        SELECT * FROM tree ORDER BY level, id
        """,
        run_id,
    )
    return rows


async def test_three_levels_of_children_each_parent_ending_after_all_of_its_own(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await processors(stack, 2, concurrency=4)
    root = await _run_of(stack.db, await _task(api, "tree", "flows.tree", {"depth": 3, "fanout": 3}))
    ended = await ended_run(stack.db, root, timeout=60, logs=stack.logs)
    assert ended["status"] == "succeeded", ended["error"]
    below = await _descendants(stack.db, root)
    assert [sum(1 for r in below if r["level"] == level) for level in (1, 2, 3)] == [3, 9, 27]
    assert all(r["status"] == "succeeded" for r in below)
    finished = {r["id"]: r["finished_at"] for r in below} | {root: ended["finished_at"]}
    for r in below:  # fan-in: no parent ended before a child of its
        assert finished[r["parent_id"]] >= r["finished_at"]
    # Each waiting parent's result says how it ended, not `waiting`.
    statuses = await stack.db.fetch(
        "SELECT DISTINCT status::text FROM task_results WHERE run_id = ANY($1::bigint[])", [root, *finished]
    )
    assert [r["status"] for r in statuses] == ["succeeded"]


async def test_a_failing_leaf_fails_its_parent_and_every_ancestor_with_its_error(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await processors(stack, 1, concurrency=8)
    root = await _run_of(
        stack.db, await _task(api, "bad-tree", "flows.tree", {"depth": 2, "fanout": 2, "fail_leaf": True})
    )
    ended = await ended_run(stack.db, root, timeout=60, logs=stack.logs)
    assert ended["status"] == "failed"
    # The root's error names its child, whose error names its own: the leaf's ValueError at the bottom.
    assert ended["error"].startswith("child run ") and "failed: child run " in ended["error"]
    assert ended["error"].endswith("ValueError: a leaf failed")


@BOTH
async def test_cancelling_a_waiting_parent_cancels_and_stops_its_descendants(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await processors(stack, 1, concurrency=8)
    root = await _run_of(
        stack.db, await _task(api, "long-tree", "flows.tree", {"depth": 2, "fanout": 2, "leaf_ms": 30_000})
    )

    async def leaves_running() -> bool:
        below = await _descendants(stack.db, root)
        return len(below) == 6 and sum(r["status"] == "running" for r in below if r["level"] == 2) == 4

    await wait_until(leaves_running, timeout=30, what="the four leaves to run")
    assert await stack.db.fetchval("SELECT status::text FROM task_schedule WHERE id = $1", root) == "waiting"
    cancelled = await api.post(f"/runs/{root}/cancel", headers=COMMAND)
    assert cancelled.status_code == 200, cancelled.text
    below = await _descendants(stack.db, root)
    assert [r["status"] for r in below] == ["cancelled"] * 6
    assert {r["error"] for r in below if r["level"] == 2} == {
        f"cancelled: its parent run {r['id']} was cancelled" for r in below if r["level"] == 1
    }

    async def leaves_stopped() -> bool:  # each by its processor, within TASKMILL_CANCEL_CHECK_S
        return stack.logs().count("was cancelled while running: stopped") == 4

    await wait_until(leaves_stopped, timeout=10, what="the four leaves to be stopped")
    again = await api.post(f"/runs/{root}/cancel", headers=COMMAND)
    assert again.status_code == 409 and "it has ended" in again.json()["detail"]
    # The slots are free: a new run goes through at once.
    quick = await _run_of(stack.db, await _task(api, "after", "noop", {}))
    assert (await ended_run(stack.db, quick, timeout=15, logs=stack.logs))["status"] == "succeeded"


async def test_map_reduce_over_a_hundred_children_reads_every_result_by_reference(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await processors(stack, 2, concurrency=8)
    root = await _run_of(stack.db, await _task(api, "map", "flows.map", {"n": 100}))
    ended = await ended_run(stack.db, root, timeout=90)
    assert ended["status"] == "succeeded", ended["error"]
    reduce = await stack.db.fetchrow(
        "SELECT s.id, s.started_at, r.result FROM task_schedule s JOIN tasks t ON t.id = s.task_id "
        "JOIN task_results r ON r.run_id = s.id WHERE t.name = $1",
        f"spawn:{root}:sum",
    )
    assert reduce is not None
    assert reduce["result"]["result"] == {
        "sum": sum(x * x for x in range(100)),
        "inputs": 100,
        "statuses": ["succeeded"],
    }
    last_square = await stack.db.fetchval(
        "SELECT max(finished_at) FROM task_schedule WHERE parent_id = $1 AND id <> $2", root, reduce["id"]
    )
    assert reduce["started_at"] >= last_square


async def test_past_the_depth_limit_the_spawning_run_fails_saying_so(stack: Stack, api: httpx.AsyncClient) -> None:
    await stack.start(distributor=1)
    await stack.add("processor", *FLOWS, "--concurrency", "4", TASKMILL_SPAWN_MAX_DEPTH="2")
    root = await _run_of(stack.db, await _task(api, "deep", "flows.tree", {"depth": 3, "fanout": 1}))
    ended = await ended_run(stack.db, root, timeout=60, logs=stack.logs)
    assert ended["status"] == "failed"
    assert "a child here would be 3 levels deep, past TASKMILL_SPAWN_MAX_DEPTH (2)" in ended["error"]


async def test_past_the_fan_out_limit_the_spawning_run_fails_and_spawns_nothing(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await stack.add("processor", *FLOWS, "--concurrency", "4", TASKMILL_SPAWN_MAX_CHILDREN="50")
    root = await _run_of(stack.db, await _task(api, "wide", "flows.map", {"n": 60}))
    ended = await ended_run(stack.db, root, timeout=60, logs=stack.logs)
    assert ended["status"] == "failed"
    assert f"run {root} would have 60 children, past TASKMILL_SPAWN_MAX_CHILDREN (50)" in ended["error"]
    assert await stack.db.fetchval("SELECT count(*) FROM task_schedule WHERE parent_id = $1", root) == 0


async def test_a_parent_run_twice_spawns_its_children_once(stack: Stack, api: httpx.AsyncClient) -> None:
    """The processor dies after the handler committed its spawns, before the outcome is recorded: the rescued
    second attempt spawns the same keys, which exist already."""
    await stack.start(distributor=1)
    await stack.add("processor", *FLOWS, "--concurrency", "4", crash="after_side_effect")
    await registered(stack)
    # A short timeout: the run lost with its processor is handed on once its timeout and grace have passed.
    root = await _run_of(stack.db, await _task(api, "twice", "flows.map", {"n": 5}, timeout_seconds=3))

    async def first_attempt_spawned() -> bool:
        n: int = await stack.db.fetchval("SELECT count(*) FROM task_schedule WHERE parent_id = $1", root)
        return n == 6

    await wait_until(first_attempt_spawned, timeout=30, what="the first attempt's children")
    await processors(stack, 1, concurrency=4)
    ended = await ended_run(stack.db, root, timeout=60, logs=stack.logs)
    assert ended["status"] == "succeeded", ended["error"]
    assert ended["attempt"] == 2
    assert await stack.db.fetchval("SELECT count(*) FROM task_schedule WHERE parent_id = $1", root) == 6
    assert await stack.db.fetchval("SELECT spawned FROM run_children WHERE parent_id = $1", root) == 6


@asynccontextmanager
async def _json_server(answer: dict[str, Any]) -> AsyncIterator[str]:
    """A loopback HTTP server answering every request with `answer` as JSON; yields its URL."""
    body = json.dumps(answer).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/spawn"
    finally:
        server.close()


async def test_an_http_answer_spawns_children_and_waits_for_them(stack: Stack, api: httpx.AsyncClient) -> None:
    await stack.start(distributor=1)
    await processors(stack, 1, concurrency=4)
    ask = {"taskmill": {"spawn": [{"type": "noop", "payload": {"n": 1}}, {"type": "flows.square", "payload": {"x": 3}}],
                        "wait": True}}  # fmt: skip
    async with _json_server(ask) as url:
        root = await _run_of(stack.db, await _task(api, "asks", "http", {"url": url}))
        ended = await ended_run(stack.db, root, timeout=30)
    assert ended["status"] == "succeeded", ended["error"]
    children = await stack.db.fetch(
        "SELECT t.type, s.status::text, t.name FROM task_schedule s JOIN tasks t ON t.id = s.task_id "
        "WHERE s.parent_id = $1 ORDER BY s.id",
        root,
    )
    assert [tuple(r) for r in children] == [
        ("noop", "succeeded", f"spawn:{root}:1"),
        ("flows.square", "succeeded", f"spawn:{root}:2"),
    ]
    # Waited: the parent ended after both children.
    last = await stack.db.fetchval("SELECT max(finished_at) FROM task_schedule WHERE parent_id = $1", root)
    assert ended["finished_at"] >= last

    # A server's answer cannot make a command run on the processors.
    ask = {"taskmill": {"spawn": [{"type": "command", "payload": {"argv": ["/bin/true"]}}]}}
    async with _json_server(ask) as url:
        refused = await _run_of(stack.db, await _task(api, "asks-command", "http", {"url": url}))
        ended = await ended_run(stack.db, refused, timeout=30)
    assert ended["status"] == "failed"
    assert ended["error"] == "taskmill.spawn item 1: type: an http answer cannot spawn a command run"
    assert await stack.db.fetchval("SELECT count(*) FROM task_schedule WHERE parent_id = $1", refused) == 0


async def test_a_command_spawns_through_its_spawn_file_and_a_bad_line_fails_it(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await processors(stack, 1, concurrency=4)
    script = (
        'printf \'%s\\n\' \'{"type": "noop", "payload": {"from": "command"}, "key": "one"}\' \'{"wait": true}\''
        ' >> "$TASKMILL_SPAWN_FILE"'
    )
    root = await _run_of(stack.db, await _task(api, "spawner", "command", {"argv": ["/bin/sh", "-c", script]}))
    ended = await ended_run(stack.db, root, timeout=30)
    assert ended["status"] == "succeeded", ended["error"]
    child = await stack.db.fetchrow(
        "SELECT s.status::text, t.payload FROM task_schedule s JOIN tasks t ON t.id = s.task_id WHERE t.name = $1",
        f"spawn:{root}:one",
    )
    assert child is not None and child["status"] == "succeeded" and child["payload"] == {"from": "command"}

    bad = 'echo \'{"type": "noop", "colour": 1}\' >> "$TASKMILL_SPAWN_FILE"'
    broken = await _run_of(stack.db, await _task(api, "bad-spawner", "command", {"argv": ["/bin/sh", "-c", bad]}))
    ended = await ended_run(stack.db, broken, timeout=30)
    assert ended["status"] == "failed"
    assert ended["error"] == "TASKMILL_SPAWN_FILE item 1: colour: Extra inputs are not permitted"
