"""Python handlers (taskmill/handlers.py), served by a real processor process that imports a real module
(tests/handlers/billing.py), tasks created through the API: registration, validation, the handler's own
transaction, errors and output, plain functions side by side (in worker processes: tests/processor/test_def_handlers.py
has the rest of them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

import distributor.service
from taskmill.settings import Settings
from tests.api.conftest import SECRET, app_client, bearer
from tests.helpers import role_process, taskmill, wait_until
from tests.transports import BOTH

MODULE = "tests.handlers.billing"
WRITE = bearer("tasks:read tasks:write")


@pytest.fixture
async def processor(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[asyncio.subprocess.Process]:
    """`taskmill processor --import tests.handlers.billing`, once it has registered its handlers."""
    await db.execute("CREATE TABLE invoices_sent (customer_id int NOT NULL, run_id bigint NOT NULL)")

    async def registered() -> bool:
        found: int = await db.fetchval("SELECT count(*) FROM task_types")
        return found == 3

    args = ("processor", "--import", MODULE, "--concurrency", "4")
    async with role_process(settings, *args, ready=registered, what="the processor to register its handlers") as proc:
        yield proc


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings.model_copy(update={"jwt_secret": SECRET})) as client:
        yield client


async def _run_of(db: asyncpg.Connection, task_id: int, status: str, settings: Settings) -> asyncpg.Record:
    async def finished() -> bool:
        await distributor.service.run(settings, until_idle=True)
        found: str | None = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", task_id)
        return found == status

    await wait_until(finished, timeout=20, interval=0.2, what=f"the run of task {task_id} to be {status}")
    row = await db.fetchrow(
        "SELECT s.id, s.error, r.result FROM task_schedule s JOIN task_results r ON r.run_id = s.id "
        "WHERE s.task_id = $1 ORDER BY r.attempt DESC LIMIT 1",
        task_id,
    )
    assert row is not None
    return row


@BOTH
async def test_a_handler_runs_in_its_own_transaction_and_returns_its_result_and_log(
    settings: Settings, db: asyncpg.Connection, processor: object, api: httpx.AsyncClient
) -> None:
    created = await api.post(
        "/tasks",
        json={"name": "invoice-7", "type": "billing.send_invoice", "payload": {"customer_id": 7}},
        headers=WRITE,
    )
    assert created.status_code == 201, created.text
    assert created.json()["timeout_seconds"] == 20  # the handler's own default
    run = await _run_of(db, created.json()["id"], "succeeded", settings)
    assert run["result"]["result"]["sent"] is True
    assert run["result"]["result"]["customer_id"] == 7
    assert run["result"]["output"] == "INFO sending the invoice of customer 7 (attempt 1)\n"
    assert [tuple(r) for r in await db.fetch("SELECT customer_id, run_id FROM invoices_sent")] == [(7, run["id"])]


@BOTH
async def test_a_handler_that_raises_is_rolled_back_and_fails_with_its_exception_and_traceback(
    settings: Settings, db: asyncpg.Connection, processor: object, api: httpx.AsyncClient
) -> None:
    created = await api.post(
        "/tasks",
        json={
            "name": "refused",
            "type": "billing.send_invoice",
            "payload": {"customer_id": 9, "fail": True},
            "max_retries": 1,
            "retry_delay_seconds": 0.1,
        },
        headers=WRITE,
    )
    assert created.status_code == 201, created.text
    run = await _run_of(db, created.json()["id"], "dead", settings)
    assert run["error"] == "RuntimeError: the mail server refused customer 9"
    output = run["result"]["output"]
    assert output.startswith("INFO sending the invoice of customer 9 (attempt 2)\nTraceback (most recent call last):")
    assert 'tests/handlers/billing.py", line' in output and output.endswith(
        "RuntimeError: the mail server refused customer 9\n"
    )
    # Both attempts wrote, both were rolled back: the status was recorded outside the handler's transaction.
    assert await db.fetchval("SELECT count(*) FROM invoices_sent") == 0
    attempts = await db.fetch("SELECT attempt, status::text FROM task_results ORDER BY attempt")
    assert [tuple(a) for a in attempts] == [(1, "failed"), (2, "dead")]


@BOTH
async def test_plain_functions_run_side_by_side(
    settings: Settings, db: asyncpg.Connection, processor: object, api: httpx.AsyncClient
) -> None:
    ids = []
    for i in range(4):
        created = await api.post(
            "/tasks", json={"name": f"nap-{i}", "type": "billing.blocking_nap", "payload": {"ms": 1000}}, headers=WRITE
        )
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    await distributor.service.run(settings, until_idle=True)
    for task_id in ids:
        run = await _run_of(db, task_id, "succeeded", settings)
        assert run["result"] == {"result": {"slept_ms": 1000}, "output": "INFO slept 1000 ms\n"}
    spans = await db.fetchrow("SELECT max(finished_at) - min(started_at) AS wall FROM task_schedule")
    assert spans is not None and spans["wall"].total_seconds() < 2.5  # four 1 s sleeps at once, not one by one


@BOTH
async def test_the_api_lists_registered_handlers_and_checks_payloads_against_their_schema(
    processor: object, api: httpx.AsyncClient
) -> None:
    types = (await api.get("/task-types", headers=WRITE)).json()
    mine = {t["name"]: t for t in types if t["module"] == MODULE}
    assert set(mine) == {"billing.send_invoice", "billing.blocking_nap", "billing.slow_write"}
    assert mine["billing.slow_write"]["payload_schema"]["additionalProperties"] is True  # no model: any object
    assert mine["billing.send_invoice"]["description"] == "Records that the customer's invoice went out."
    assert mine["billing.send_invoice"]["payload_schema"]["properties"]["customer_id"]["minimum"] == 1

    bad = await api.post(
        "/tasks",
        json={"name": "bad", "type": "billing.send_invoice", "payload": {"customer_id": 0}},
        headers=WRITE,
    )
    assert bad.status_code == 422
    assert bad.json()["errors"] == [{"field": "payload.customer_id", "reason": "0 is less than the minimum of 1"}]
    missing = await api.post(
        "/tasks", json={"name": "missing", "type": "billing.send_invoice", "payload": {}}, headers=WRITE
    )
    assert missing.status_code == 422
    assert missing.json()["errors"] == [{"field": "payload", "reason": "'customer_id' is a required property"}]
    unknown = await api.post("/tasks", json={"name": "u", "type": "billing.nope", "payload": {}}, headers=WRITE)
    assert unknown.status_code == 422
    [error] = unknown.json()["errors"]
    assert error["field"] == "type"
    assert error["reason"].startswith("unknown task type 'billing.nope' (no processor registered it); known: ")


def test_a_module_that_cannot_be_imported_stops_the_processor_with_one_line(settings: Settings) -> None:
    done = taskmill("processor", "--import", "tests.handlers.no_such_module", DATABASE_URL=settings.database_url)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "taskmill processor: cannot import tests.handlers.no_such_module: ModuleNotFoundError: "
        "No module named 'tests.handlers.no_such_module'"
    )


@pytest.mark.parametrize("transport", ["postgres"])
async def test_the_example_module_of_the_readme_serves_its_handlers(
    settings: Settings, db: asyncpg.Connection, api: httpx.AsyncClient
) -> None:

    async def registered() -> bool:
        names = {r[0] for r in await db.fetch("SELECT name FROM task_types")}
        return names == {"billing.send_invoice", "billing.monthly_report"}

    async with role_process(
        settings, "processor", "--import", "examples.billing", ready=registered, what="examples.billing registered"
    ):
        created = await api.post(
            "/tasks",
            json={"name": "inv", "type": "billing.send_invoice", "payload": {"customer_id": 3, "amount_cents": 990}},
            headers=WRITE,
        )
        assert created.status_code == 201, created.text
        run = await _run_of(db, created.json()["id"], "succeeded", settings)
        assert run["result"] == {
            "result": {"sent": True, "attempt": 1},
            "output": "INFO invoice of 990 cents to customer 3\n",
        }
        assert await db.fetchval("SELECT amount_cents FROM invoices_sent WHERE run_id = $1", run["id"]) == 990


async def test_a_handler_past_its_timeout_fails_and_its_writes_are_rolled_back(
    settings: Settings, db: asyncpg.Connection, processor: object, api: httpx.AsyncClient
) -> None:
    created = await api.post(
        "/tasks",
        json={"name": "slow", "type": "billing.slow_write", "payload": {"seconds": 5}, "timeout_seconds": 1},
        headers=WRITE,
    )
    assert created.status_code == 201, created.text
    run = await _run_of(db, created.json()["id"], "failed", settings)
    assert run["error"] == "timed out after 1 s"
    assert await db.fetchval("SELECT count(*) FROM invoices_sent") == 0


@pytest.mark.parametrize("transport", ["postgres"])
async def test_health_names_a_type_no_live_processor_serves_and_its_waiting_runs(
    settings: Settings, db: asyncpg.Connection, processor: asyncio.subprocess.Process, api: httpx.AsyncClient
) -> None:
    for i in range(2):
        body = {"name": f"inv-{i}", "type": "billing.send_invoice", "payload": {"customer_id": 1}}
        assert (await api.post("/tasks", json=body, headers=WRITE)).status_code == 201
    health = (await api.get("/health")).json()
    assert health["unserved_types"] == []  # the processor is alive and serves the type
    # The processor stops before any of them is handed out (no distributor runs): nothing serves the type any more.
    processor.terminate()
    await asyncio.wait_for(processor.wait(), 30)
    assert await db.fetchval("SELECT count(*) FROM processors") == 0
    health = (await api.get("/health")).json()
    assert health["status"] == "ok"
    assert health["unserved_types"] == [
        {"type": "billing.send_invoice", "due_runs": 2, "reason": "no live processor serves this type"},
    ]
