"""The PostgreSQL transport's queue statements (taskmill/store/queue.py), on the test's own database: what is ready,
leases and their renewal, settling by delivery, per-type claims, and the wake-up a publish sends."""

from __future__ import annotations

import asyncio

import asyncpg

from taskmill.settings import Settings
from taskmill.store import queue
from taskmill.wakeup import Wakeup


async def _enqueue(db: asyncpg.Connection, *messages: queue.Message) -> None:
    await queue.enqueue(db, list(messages))


async def test_a_claim_takes_the_oldest_ready_messages_up_to_its_limit_and_leases_them(db: asyncpg.Connection) -> None:
    await _enqueue(db, *(queue.Message("noop", f"m{i}".encode(), i + 1) for i in range(5)))
    await _enqueue(db, queue.Message("noop", b"later", 9, delay_s=60))
    first = await queue.claim(db, 3, "w1", lease_s=30)
    assert [d.body for d in first] == [b"m0", b"m1", b"m2"]
    assert {d.delivery for d in first} == {1}
    rest = await queue.claim(db, 10, "w2", lease_s=30)
    assert [d.body for d in rest] == [b"m3", b"m4"]  # leased ones and the delayed one are not ready
    assert await queue.ready(db) == 0
    wait = await queue.next_ready_in(db)
    assert wait is not None and 29 < wait <= 30  # the first lease ends before the delayed one is ready


async def test_a_lease_that_runs_out_hands_the_message_out_again_and_the_old_delivery_settles_nothing(
    db: asyncpg.Connection,
) -> None:
    await _enqueue(db, queue.Message("noop", b"m", 1))
    [old] = await queue.claim(db, 1, "dead-worker", lease_s=0.2)
    assert await queue.claim(db, 1, "w2", lease_s=30) == []
    await asyncio.sleep(0.3)
    [new] = await queue.claim(db, 1, "w2", lease_s=30)
    assert (new.id, new.delivery) == (old.id, 2)
    await queue.ack(db, [old])  # the dead worker's late ack: another delivery holds it now
    assert await db.fetchval("SELECT count(*) FROM run_queue") == 1
    await queue.ack(db, [new])
    assert await db.fetchval("SELECT count(*) FROM run_queue") == 0


async def test_renewing_keeps_a_held_message_from_being_handed_out_again(db: asyncpg.Connection) -> None:
    await _enqueue(db, queue.Message("noop", b"m", 1))
    [held] = await queue.claim(db, 1, "w1", lease_s=0.3)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await queue.renew(db, [held], 0.3)
        assert await queue.claim(db, 1, "w2", lease_s=30) == []


async def test_requeue_makes_it_ready_at_once_and_reject_moves_it_to_the_dead_letters_with_the_reason(
    db: asyncpg.Connection,
) -> None:
    await _enqueue(db, queue.Message("noop", b"a", 1), queue.Message("noop", b"b", 2))
    a, b = await queue.claim(db, 2, "w1", lease_s=30)
    await queue.requeue(db, [a])
    await queue.reject(db, [b], "unreadable")
    assert [d.body for d in await queue.claim(db, 5, "w2", lease_s=30)] == [b"a"]
    dead = await db.fetch("SELECT body, run_id, reason FROM run_queue WHERE queue = 'dead'")
    assert [tuple(r) for r in dead] == [(b"b", 2, "unreadable")]


async def test_a_claim_for_some_types_takes_only_those(db: asyncpg.Connection) -> None:
    await _enqueue(
        db, queue.Message("http", b"h", 1), queue.Message("command", b"c", 2), queue.Message("noop", b"n", 3)
    )
    assert [d.type for d in await queue.claim(db, 5, "w1", 30, types=["command", "noop"])] == ["command", "noop"]
    assert [d.type for d in await queue.claim(db, 5, "w2", 30)] == ["http"]


async def test_dead_letters_are_never_handed_out(db: asyncpg.Connection) -> None:
    await _enqueue(db, queue.Message("noop", b"gone", 1, reason="retries spent"))
    assert await queue.claim(db, 5, "w1", 30) == []
    assert await queue.ready(db) == 0


async def test_a_publish_of_work_wakes_a_listener_and_a_dead_letter_does_not(
    db: asyncpg.Connection, settings: Settings
) -> None:
    async with Wakeup(settings.database_url, queue.CHANNEL) as wakeup:
        await _enqueue(db, queue.Message("noop", b"gone", 1, reason="retries spent"))
        assert await wakeup.wait(0.3) is False
        await _enqueue(db, queue.Message("noop", b"now", 2))
        assert await wakeup.wait(2) is True
        # A retry too: a processor asleep until later must wake at its time if that comes sooner.
        await _enqueue(db, queue.Message("noop", b"later", 3, delay_s=60))
        assert await wakeup.wait(2) is True
