"""A statement that commits while its reply is lost with the connection (the database or the network drops just
then): the processor retries it, finds it already done, and must take that as its own doing rather than as
another processor's. The fault is injected at the store call: the real statement runs against the real database,
then the caller sees the connection error the lost reply would give."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest

import processor.claim
import processor.record
from taskmill.settings import Settings
from taskmill.store.runs import Outcome, finish_runs, start_runs
from tests.helpers import new_task
from tests.processor.test_retries import FAIL, attempts, run_pipeline
from tests.transports import take_dead_letters


class LosingTheReply:
    """`real`, whose first call with a batch matching `when` commits and then fails as a dropped connection."""

    def __init__(self, real: Callable[..., Awaitable[list[Any]]], when: Callable[[Sequence[Any]], bool]) -> None:
        self.real = real
        self.when = when
        self.fired = False

    async def __call__(self, conn: asyncpg.Pool, *args: Any) -> list[Any]:
        answer = await self.real(conn, *args)
        if not self.fired and self.when(args[-1]):
            self.fired = True
            raise ConnectionResetError("connection reset by peer (injected after the commit)")
        return answer


async def test_a_claim_whose_reply_was_lost_still_runs_the_attempt_once(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = LosingTheReply(start_runs, lambda batch: True)
    monkeypatch.setattr(processor.claim, "start_runs", fault)
    task = await new_task(db, "once", "noop", max_retries=0)
    await run_pipeline(settings, db, {"succeeded": 1})
    assert fault.fired

    # Not left in running for the rescuer to fail later: executed on this first attempt, recorded once.
    assert [(r["attempt"], r["status"]) for r in await attempts(db, task.id)] == [(1, "succeeded")]
    run_id = await db.fetchval("SELECT id FROM task_schedule WHERE task_id = $1", task.id)
    audit = await db.fetch("SELECT to_status::text FROM run_audit WHERE run_id = $1 ORDER BY at", run_id)
    assert [a["to_status"] for a in audit] == ["scheduled", "queued", "running", "succeeded"]


async def test_a_dead_outcome_whose_reply_was_lost_is_still_dead_lettered(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dead(batch: Sequence[Outcome]) -> bool:
        return any(o.status == "dead" for o in batch)

    fault = LosingTheReply(finish_runs, dead)
    monkeypatch.setattr(processor.record, "finish_runs", fault)
    task = await new_task(db, "doomed", "command", FAIL, max_retries=1, retry_delay_seconds=0.1)
    await run_pipeline(settings, db, {"dead": 1})
    assert fault.fired

    assert [(r["attempt"], r["status"]) for r in await attempts(db, task.id)] == [(1, "failed"), (2, "dead")]
    [message] = await take_dead_letters(settings)  # the dead-letter queue still holds one message for the dead run
    assert b'"attempt":2' in message.body
