"""Workflows end to end: levels run in parallel across processors, failures skip what depends on them, cycles are
refused, a killed processor loses nothing and repeats nothing in effect, a workflow run can be cancelled."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from tests.faults.harness import Stack
from tests.helpers import wait_until
from tests.transports import BOTH
from tests.workflows.conftest import WRITE, finished_run, processors, step


async def _define(api: httpx.AsyncClient, body: dict[str, object]) -> dict[str, object]:
    created = await api.post("/workflows", json=body, headers=WRITE)
    assert created.status_code == 201, created.text
    found: dict[str, object] = created.json()
    return found


async def _invoke(api: httpx.AsyncClient, name: str) -> int:
    invoked = await api.post(f"/workflows/{name}/invoke", headers=WRITE)
    assert invoked.status_code == 201, invoked.text
    run_id: int = invoked.json()["id"]
    return run_id


@BOTH
async def test_a_diamond_runs_its_middle_level_at_once_on_two_processors_and_its_last_step_after_both(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await processors(stack, 2, concurrency=1)
    diamond = [step("a"), step("b", "a", ms=1500), step("c", "a", ms=1500), step("d", "b", "c")]
    await _define(api, {"name": "diamond", "tasks": diamond})
    run_id = await _invoke(api, "diamond")
    assert await finished_run(stack.db, run_id) == "succeeded"
    seen = await api.get(f"/workflow-runs/{run_id}", headers=WRITE)
    assert seen.status_code == 200, seen.text
    body = seen.json()
    assert body["workflow"] == "diamond" and body["status"] == "succeeded"
    runs = {r["task"]: r for r in body["runs"]}
    assert sorted(runs) == ["a", "b", "c", "d"]
    assert all(r["status"] == "succeeded" for r in runs.values())
    a, b, c, d = (runs[n] for n in "abcd")
    rows = await stack.db.fetch(
        "SELECT id, worker FROM task_schedule WHERE id = ANY($1::bigint[])", [b["run_id"], c["run_id"]]
    )
    workers = {r["id"]: r["worker"] for r in rows}
    assert workers[b["run_id"]] != workers[c["run_id"]], "b and c ran on the same processor"
    # b and c overlap (each started before the other finished), both after a; d after both.
    assert b["started_at"] >= a["finished_at"] and c["started_at"] >= a["finished_at"]
    assert b["started_at"] < c["finished_at"] and c["started_at"] < b["finished_at"]
    assert d["started_at"] >= max(b["finished_at"], c["finished_at"])


async def test_a_failed_step_skips_what_depends_on_it_and_theirs_in_turn_and_fails_the_workflow_run(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await processors(stack, 1, concurrency=4)
    tasks = [step("a"), step("b", "a", fail=True), step("c", "a"), step("d", "b", "c"), step("e", "d")]
    await _define(api, {"name": "breaks", "tasks": tasks})
    run_id = await _invoke(api, "breaks")
    assert await finished_run(stack.db, run_id) == "failed"
    runs = {r["task"]: r for r in (await api.get(f"/workflow-runs/{run_id}", headers=WRITE)).json()["runs"]}
    assert {n: r["status"] for n, r in runs.items()} == {
        "a": "succeeded",
        "b": "failed",
        "c": "succeeded",
        "d": "skipped",
        "e": "skipped",
    }
    assert runs["d"]["error"] == "dependency b failed"
    assert runs["e"]["error"] == "dependency d skipped"
    assert runs["d"]["started_at"] is None and runs["e"]["started_at"] is None


async def test_continue_on_failure_lets_the_dependents_of_a_failed_step_run(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await processors(stack, 1, concurrency=2)
    tasks = [{**step("a", fail=True), "continue_on_failure": True}, step("b", "a")]
    await _define(api, {"name": "tolerant", "tasks": tasks})
    run_id = await _invoke(api, "tolerant")
    assert await finished_run(stack.db, run_id) == "failed"  # a failed; b ran anyway
    runs = {r["task"]: r["status"] for r in (await api.get(f"/workflow-runs/{run_id}", headers=WRITE)).json()["runs"]}
    assert runs == {"a": "failed", "b": "succeeded"}


async def test_a_processor_killed_mid_workflow_loses_nothing_and_repeats_nothing_in_effect(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """Each step writes a row in its own transaction: the step killed mid-run wrote nothing that stayed, so every
    step's row is there exactly once when the workflow run has succeeded on the processor that is left."""
    await stack.start(distributor=1)
    first = await stack.add("processor", "--import", "tests.handlers.flows", "--concurrency", "4")
    # Short timeouts: a run lost with its processor is handed on once its timeout and grace have passed.
    tasks = [
        {**step("a", record=True), "timeout_seconds": 5},
        {**step("b", "a", ms=3000, record=True), "timeout_seconds": 5},
        {**step("c", "a", ms=3000, record=True), "timeout_seconds": 5},
        {**step("d", "b", "c", record=True), "timeout_seconds": 5},
    ]
    await _define(api, {"name": "survivor", "tasks": tasks})
    run_id = await _invoke(api, "survivor")

    async def middle_running() -> bool:
        n: int = await stack.db.fetchval(
            "SELECT count(*) FROM task_schedule WHERE workflow_run_id = $1 AND status = 'running'", run_id
        )
        return n == 2

    await wait_until(middle_running, timeout=20, what="b and c to be running")
    await first.kill()
    await stack.add("processor", "--import", "tests.handlers.flows", "--concurrency", "4")
    assert await finished_run(stack.db, run_id, timeout=60) == "succeeded"
    done = await stack.db.fetch(
        "SELECT t.name, count(d.run_id) AS n FROM task_schedule s JOIN tasks t ON t.id = s.task_id "
        "LEFT JOIN steps_done d ON d.run_id = s.id WHERE s.workflow_run_id = $1 GROUP BY t.name ORDER BY t.name",
        run_id,
    )
    assert [(r["name"], r["n"]) for r in done] == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    lost = await stack.db.fetch("SELECT lost FROM task_schedule WHERE workflow_run_id = $1 ORDER BY id", run_id)
    assert [r["lost"] for r in lost] == [0, 1, 1, 0]  # b and c were handed on once, nothing else was


@BOTH
async def test_cancelling_a_workflow_run_cancels_what_has_not_ended_and_stops_what_runs(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    await stack.start(distributor=1)
    await processors(stack, 1, concurrency=2)
    await _define(api, {"name": "long", "tasks": [step("a", ms=4000), step("b", "a"), step("c", "b")]})
    run_id = await _invoke(api, "long")

    async def a_running() -> bool:
        status: str = await stack.db.fetchval(
            "SELECT s.status::text FROM task_schedule s JOIN tasks t ON t.id = s.task_id "
            "WHERE s.workflow_run_id = $1 AND t.name = 'a'",
            run_id,
        )
        return status == "running"

    await wait_until(a_running, timeout=20, what="a to run")
    cancelled = await api.post(f"/workflow-runs/{run_id}/cancel", headers=WRITE)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    runs = {r["task"]: r["status"] for r in (await api.get(f"/workflow-runs/{run_id}", headers=WRITE)).json()["runs"]}
    assert runs == {"a": "cancelled", "b": "cancelled", "c": "cancelled"}

    async def a_stopped() -> bool:  # its processor stops it within TASKMILL_CANCEL_CHECK_S
        return "was cancelled while running: stopped" in stack.logs()

    await wait_until(a_stopped, timeout=10, what="a to be stopped")
    await asyncio.sleep(4)  # past the end a would have had: nothing was recorded for it
    recorded = await stack.db.fetchval(
        "SELECT count(*) FROM task_results r JOIN task_schedule s ON s.id = r.run_id WHERE s.workflow_run_id = $1",
        run_id,
    )
    assert recorded == 0
    again = await api.post(f"/workflow-runs/{run_id}/cancel", headers=WRITE)
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("tasks", "field", "reason"),
    [
        ([step("a", "c"), step("b", "a"), step("c", "b")], "tasks.0.depends_on", "a cycle: a -> c -> b -> a"),
        ([step("a", "nope")], "tasks.0.depends_on", "no step named 'nope' in this workflow"),
        ([step("a", "a")], "tasks.0.depends_on", "step 'a' cannot depend on itself"),
        ([step("a"), step("a")], "tasks.1.name", "repeats the name of step 0 ('a')"),
    ],
)
async def test_a_bad_graph_is_refused_naming_the_step_and_the_cycle(
    db: asyncpg.Connection, client: httpx.AsyncClient, tasks: list[dict[str, object]], field: str, reason: str
) -> None:
    refused = await client.post("/workflows", json={"name": "bad", "tasks": tasks}, headers=WRITE)
    assert refused.status_code == 422, refused.text
    assert {"field": field, "reason": reason} in refused.json()["errors"]
    assert await db.fetchval("SELECT count(*) FROM workflows") == 0


async def test_sequence_and_parallel_expand_to_the_same_edges(client: httpx.AsyncClient) -> None:
    noop = {"type": "noop"}
    body = {
        "name": "shorthand",
        "sequence": [
            {"name": "extract", **noop},
            {"parallel": [{"name": "clean", **noop}, {"sequence": [{"name": "x1", **noop}, {"name": "x2", **noop}]}]},
            {"name": "load", **noop},
        ],
    }
    created = await client.post("/workflows", json=body, headers=WRITE)
    assert created.status_code == 201, created.text
    edges = {t["name"]: t["depends_on"] for t in created.json()["tasks"]}
    assert edges == {"extract": [], "clean": ["extract"], "x1": ["extract"], "x2": ["x1"], "load": ["clean", "x2"]}


async def test_a_step_is_not_listed_with_the_tasks_and_is_changed_only_through_its_workflow(
    db: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    noop = {"name": "a", "type": "noop"}
    created = await client.post("/workflows", json={"name": "wf", "tasks": [noop]}, headers=WRITE)
    assert created.status_code == 201, created.text
    own = await client.post("/tasks", json={"name": "a", "type": "noop"}, headers=WRITE)  # a step's name is free
    assert own.status_code == 201, own.text
    listed = (await client.get("/tasks", headers=WRITE)).json()["items"]
    assert [t["name"] for t in listed] == ["a"] and listed[0]["id"] == own.json()["id"]
    step_id = await db.fetchval("SELECT id FROM tasks WHERE workflow_id IS NOT NULL")
    for method, path in (
        ("PUT", f"/tasks/{step_id}"),
        ("PUT", f"/tasks/{step_id}/inactive"),
        ("DELETE", f"/tasks/{step_id}"),
    ):
        body = {"name": "a", "type": "noop"} if path.endswith(str(step_id)) and method == "PUT" else None
        refused = await client.request(method, path, json=body, headers=WRITE)
        assert refused.status_code == 409, (method, path, refused.text)
        assert "is a step of a workflow" in refused.json()["detail"]
