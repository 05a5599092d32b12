"""Runs coalesced into one message (version 2): when many fall due together the distributor puts up to
TASKMILL_MESSAGE_RUNS of a type in a message, spread so every processor gets some; the processor runs each on its
own (never more at once than its concurrency), dead-letters one that no run can come of alone, and acks the message
once every run in it is recorded."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg
import pytest

from distributor.dispatch import runs_per_message
from taskmill.messages import batch_body
from taskmill.settings import Settings
from tests.helpers import run_message, statuses
from tests.processor.brokers import Broker, distribute, process


@pytest.mark.parametrize(
    ("runs", "consumers", "cap", "expected"),
    [
        (1, 1, 50, 1),  # a lone run goes alone
        (7, 1, 50, 1),  # fewer than eight messages' worth: one a message
        (1000, 1, 50, 50),  # a burst: the cap
        (1000, 2, 50, 50),
        (1000, 100, 50, 5),  # two messages per processor: every one of them gets some
        (1000, 2, 1, 1),  # TASKMILL_MESSAGE_RUNS=1 turns coalescing off
    ],
)
def test_runs_per_message_spread_a_claim_over_every_processor(
    runs: int, consumers: int, cap: int, expected: int
) -> None:
    assert runs_per_message(runs, consumers, cap) == expected


async def _noop_runs(db: asyncpg.Connection, n: int) -> list[asyncpg.Record]:
    task_id = await db.fetchval(
        "INSERT INTO tasks (name, type, schedule_kind) VALUES ('b', 'noop', 'immediate') RETURNING id"
    )
    rows = await db.fetch(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, now() - i * interval '1 ms' FROM generate_series(1, $2) i RETURNING id, scheduled_time",
        task_id,
        n,
    )
    return rows


async def test_many_due_runs_go_out_coalesced_and_all_run_once(
    settings: Settings,
    db: asyncpg.Connection,
    broker: Broker,
) -> None:
    run_ids = [r["id"] for r in await _noop_runs(db, 400)]
    await distribute(settings.model_copy(update={"message_runs": 20}))
    sizes = []
    while await broker.count(broker.copies.name):
        body = json.loads(await broker.take_copy())
        sizes.append(len(body["runs"]) if body["v"] == 2 else 1)
    # 400 due runs, one claim: up to 20 a message, so 20 messages (this broker has no processor consuming yet).
    assert sum(sizes) == 400 and max(sizes) == 20 and len(sizes) == 20
    await process(settings)
    assert await statuses(db) == {"succeeded": 400}
    assert await db.fetchval("SELECT count(*) FROM task_results") == 400
    assert await db.fetchval("SELECT max(attempt) FROM task_schedule WHERE id = ANY($1)", run_ids) == 1


async def test_a_processor_runs_no_more_of_a_message_at_once_than_its_concurrency(
    settings: Settings, db: asyncpg.Connection
) -> None:
    task_id = await db.fetchval(
        "INSERT INTO tasks (name, type, schedule_kind, payload) VALUES ('s', 'sleep', 'immediate', '{\"ms\": 300}') "
        "RETURNING id"
    )
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) SELECT $1, now() - i * interval '1 ms' "
        "FROM generate_series(1, 6) i",
        task_id,
    )
    await distribute(settings.model_copy(update={"message_runs": 6}))
    await process(settings.model_copy(update={"concurrency": 2}))
    spans = await db.fetch("SELECT started_at, finished_at FROM task_results ORDER BY started_at")
    assert len(spans) == 6
    most = max(sum(1 for o in spans if o["started_at"] < s["finished_at"] and s["started_at"] < o["finished_at"])
               for s in spans)  # fmt: skip
    assert most == 2


async def test_a_run_of_a_coalesced_message_that_is_no_run_of_ours_is_dead_lettered_alone(
    settings: Settings,
    db: asyncpg.Connection,
    broker: Broker,
) -> None:
    good = await _noop_runs(db, 2)
    bodies = [run_message(run_id=r["id"], scheduled_time=r["scheduled_time"]).wire() for r in good]
    stranger = run_message(run_id=987_654, scheduled_time=datetime.now(UTC)).wire()
    await broker.publish(batch_body([bodies[0], stranger, bodies[1]]), "noop", good[0]["id"])
    await process(settings)
    assert await statuses(db) == {"succeeded": 2}
    assert await broker.count(broker.topology.names.work_queue) == 0
    dead = await broker.channel.declare_queue(broker.topology.names.dead_queue, passive=True)
    letter = await dead.get(no_ack=True)
    assert letter is not None and json.loads(letter.body)["run_id"] == 987_654  # the run alone, not the message
    assert letter.headers["x-taskmill-reason"] == "unknown run id 987654"
    assert await broker.count(broker.topology.names.dead_queue) == 0


async def test_a_coalesced_message_delivered_again_runs_only_what_had_not_run(
    settings: Settings,
    db: asyncpg.Connection,
    broker: Broker,
) -> None:
    runs = await _noop_runs(db, 2)
    first, second = (r["id"] for r in runs)
    bodies = [run_message(run_id=r["id"], scheduled_time=r["scheduled_time"]).wire() for r in runs]
    message = batch_body(bodies)
    # The first run was already done by a processor that died before acking the message.
    await broker.publish(bodies[0], "noop", first)
    await process(settings)
    assert await statuses(db) == {"succeeded": 1, "scheduled": 1}
    await broker.publish(message, "noop", first)
    await process(settings)
    assert await statuses(db) == {"succeeded": 2}
    assert [tuple(r) for r in await db.fetch("SELECT run_id, attempt FROM task_results ORDER BY run_id")] == [
        (first, 1),
        (second, 1),
    ]
