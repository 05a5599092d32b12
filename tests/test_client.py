from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from taskmill.client import DeferError, defer, invoke_workflow, schedule
from taskmill.models import TaskCreate
from taskmill.store.tasktypes import Registered, register
from taskmill.store.workflows import create_workflow
from taskmill.workflows import WorkflowCreate


async def test_a_caller_that_rolls_back_has_scheduled_nothing(db: asyncpg.Connection) -> None:
    with pytest.raises(RuntimeError, match="the caller's own failure"):
        async with db.transaction():
            await db.execute("CREATE TEMP TABLE signups (id int)")
            await schedule(db, TaskCreate(name="reminder", type="noop"), created_by="signup-service")
            assert await db.fetchval("SELECT count(*) FROM task_schedule") == 1  # visible inside the transaction
            raise RuntimeError("the caller's own failure")
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0
    assert await db.fetchval("SELECT count(*) FROM task_schedule") == 0


async def test_a_caller_that_commits_has_scheduled_its_run(db: asyncpg.Connection) -> None:
    async with db.transaction():
        task = await schedule(db, TaskCreate(name="reminder", type="noop"), created_by="signup-service")
    row = await db.fetchrow("SELECT status::text, created_by FROM task_schedule WHERE task_id = $1", task.id)
    assert row is not None and tuple(row) == ("scheduled", "signup-service")


async def _register_invoice_type(db: asyncpg.Connection) -> None:
    """As a processor serving tests/handlers/billing.py registers it."""
    schema = {"type": "object", "properties": {"customer_id": {"type": "integer", "minimum": 1}},
              "required": ["customer_id"]}  # fmt: skip
    await register(db, [Registered("billing.send_invoice", "", schema, 20.0, "tests.handlers.billing")], "w")


async def test_defer_inside_a_rolled_back_transaction_schedules_nothing(db: asyncpg.Connection) -> None:
    await _register_invoice_type(db)
    with pytest.raises(RuntimeError, match="the caller's own failure"):
        async with db.transaction():
            await defer(db, "billing.send_invoice", {"customer_id": 7}, idempotency_key="inv-7")
            raise RuntimeError("the caller's own failure")
    assert await db.fetchval("SELECT count(*) FROM task_schedule") == 0


async def test_defer_twice_with_one_idempotency_key_makes_one_run(db: asyncpg.Connection) -> None:
    await _register_invoice_type(db)
    async with db.transaction():
        first = await defer(db, "billing.send_invoice", {"customer_id": 7}, idempotency_key="inv-7")
    async with db.transaction():
        again = await defer(db, "billing.send_invoice", {"customer_id": 7}, idempotency_key="inv-7")
        other = await defer(db, "billing.send_invoice", {"customer_id": 8}, idempotency_key="inv-8")
        plain = await defer(db, "noop")
    assert again == first and len({first, other, plain}) == 3
    rows = await db.fetch(
        "SELECT s.id, t.type, t.payload, t.timeout_seconds, s.status::text FROM task_schedule s "
        "JOIN tasks t ON t.id = s.task_id ORDER BY s.id"
    )
    assert [(r["id"], r["type"], r["payload"], r["status"]) for r in rows] == [
        (first, "billing.send_invoice", {"customer_id": 7}, "scheduled"),
        (other, "billing.send_invoice", {"customer_id": 8}, "scheduled"),
        (plain, "noop", {}, "scheduled"),
    ]
    assert rows[0]["timeout_seconds"] == 20.0  # the handler's default


async def test_defer_at_a_time_makes_a_run_at_that_time(db: asyncpg.Connection) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    run_id = await defer(db, "noop", at=at)
    assert await db.fetchval("SELECT scheduled_time FROM task_schedule WHERE id = $1", run_id) == at


async def test_defer_refuses_an_unknown_type_and_a_payload_that_does_not_fit(db: asyncpg.Connection) -> None:
    await _register_invoice_type(db)
    with pytest.raises(DeferError, match=r"^type: unknown task type 'billing.nope' \(no processor registered it\)"):
        await defer(db, "billing.nope", {})
    with pytest.raises(DeferError, match=r"^payload.customer_id: 0 is less than the minimum of 1$"):
        await defer(db, "billing.send_invoice", {"customer_id": 0})
    with pytest.raises(DeferError, match=r"^payload: does not fit type sleep"):
        await defer(db, "sleep", {"ms": "long"})
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0


async def test_invoke_workflow_makes_a_workflow_run_only_if_the_caller_commits(db: asyncpg.Connection) -> None:
    steps = [{"name": "a", "type": "noop"}, {"name": "b", "type": "noop", "depends_on": ["a"]}]
    await create_workflow(db, WorkflowCreate.model_validate({"name": "etl", "tasks": steps}))
    tx = db.transaction()
    await tx.start()
    await invoke_workflow(db, "etl")
    await tx.rollback()
    assert await db.fetchval("SELECT count(*) FROM workflow_runs") == 0
    async with db.transaction():
        run_id = await invoke_workflow(db, "etl")
    runs = await db.fetch(
        "SELECT t.name, s.status::text FROM task_schedule s JOIN tasks t ON t.id = s.task_id "
        "WHERE s.workflow_run_id = $1 ORDER BY t.name",
        run_id,
    )
    assert [tuple(r) for r in runs] == [("a", "scheduled"), ("b", "blocked")]
    with pytest.raises(LookupError, match="no workflow named 'nope'"):
        await invoke_workflow(db, "nope")
