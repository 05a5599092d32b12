"""The processor's intake over PostgreSQL (processor/pg_intake.py): the delivery limit, what a stopping processor
hands back, and the types a general processor leaves to dedicated ones."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

import processor.service
from processor.intake import Delivery
from processor.pg_intake import PgIntake
from taskmill.models import Schedule
from taskmill.settings import Settings
from taskmill.states import ScheduleKind
from taskmill.store import queue
from taskmill.store.processors import hold_presence, register
from tests.helpers import new_task, run_message, running, statuses, wait_until
from tests.processor.brokers import distribute, process
from tests.transports import counts, take_dead_letters

pytestmark = pytest.mark.parametrize("transport", ["postgres"])


async def test_a_message_handed_out_more_than_the_delivery_limit_is_dead_lettered_not_run(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await new_task(db, "killer", "noop")
    await distribute(settings)
    # As if ten processors had taken it and died, one after the other.
    await db.execute("UPDATE run_queue SET deliveries = $1", settings.delivery_limit)
    await process(settings)
    assert await statuses(db) == {"queued": 1}  # never started: the rescuer's lease decides what becomes of the run
    [dead] = await take_dead_letters(settings)
    assert dead.reason == "delivery limit reached"
    assert await counts(settings) == {"work": 0, "dead": 0}


@pytest.mark.timing
async def test_a_stopping_processor_hands_back_what_it_holds_and_has_not_started(
    settings: Settings, db: asyncpg.Connection
) -> None:
    # Published ahead of its time (the dispatch lead): the processor holds it until it is due, and stops first.
    at = datetime.now(UTC) + timedelta(seconds=1.8)
    await new_task(db, "soon", "noop", schedule=Schedule(kind=ScheduleKind.ONCE, at=at))
    async with running(processor.service.run, settings):
        await distribute(settings)

        async def held() -> bool:
            leased: int = await db.fetchval("SELECT count(*) FROM run_queue WHERE leased_by IS NOT NULL")
            return leased == 1

        await wait_until(held, timeout=5, what="the processor to take the message")
    assert datetime.now(UTC) < at, "the test was too slow to stop the processor before the run fell due"
    assert await statuses(db) == {"queued": 1}
    left = await db.fetch("SELECT leased_by, deliveries, available_at <= now() AS ready FROM run_queue")
    assert [tuple(r) for r in left] == [(None, 1, True)]  # back in the queue, ready for another processor
    await wait_until(lambda: _after(at), timeout=5, what="the run's time")
    await process(settings)
    assert await statuses(db) == {"succeeded": 1}


async def _after(at: datetime) -> bool:
    return datetime.now(UTC) >= at


class _Claims:
    """Counts the claims of every intake, passing them on."""

    def __init__(self) -> None:
        self.made = 0
        self._claim = queue.claim

    async def __call__(self, *args: Any, **kwargs: Any) -> list[queue.Delivery]:
        self.made += 1
        return await self._claim(*args, **kwargs)


@asynccontextmanager
async def _keeping(
    pool: asyncpg.Pool, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[PgIntake, list[Delivery], _Claims]]:
    """A general processor's intake fetching (its claims counted), the deliveries it handed out, and the count."""
    claims = _Claims()
    monkeypatch.setattr(queue, "claim", claims)
    got: list[Delivery] = []
    intake = PgIntake(pool, settings, "general:1")
    await intake.subscribe(lambda delivery: _append(got, delivery))
    stop = asyncio.Event()
    keeping = asyncio.create_task(intake.keep(stop, lambda: True))
    try:
        yield intake, got, claims
    finally:
        stop.set()
        await keeping
        await intake.close()


async def test_a_general_processor_idles_while_a_dedicated_type_waits_and_takes_it_once_its_processor_is_gone(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A processor dedicated to sleep, at work: its row is live and it holds its presence lock (its connection).
    await register(db, "dedicated:1", "none", types=["sleep"])
    presence = await asyncpg.connect(settings.database_url)
    await hold_presence(presence, "dedicated:1")
    await queue.enqueue(db, [queue.Message("sleep", run_message(type="sleep").wire(), 1)])
    async with _keeping(pool, settings, monkeypatch) as (_, got, claims):
        await asyncio.sleep(1.5)
        assert got == []
        assert claims.made <= 4, f"{claims.made} claims in 1.5 s for a message this processor must not take"

        # Killed: its connection goes, its row looks live for 30 s more.
        await presence.close()
        gone = time.monotonic()
        await wait_until(lambda: _some(got), timeout=10, what="the general processor to take the run")
        assert time.monotonic() - gone <= 5.0


@pytest.mark.parametrize("priority", [0, 5], ids=["normal-lane", "urgent-lane"])
async def test_a_processor_whose_lane_is_full_waits_for_room_and_does_not_poll_for_the_ready_messages_it_cannot_take(
    settings: Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, priority: int
) -> None:
    # Two slots, five ready messages of one lane: it is full at two, the three others are ready but not for it, and
    # the other lane is empty. Before, the loop asked when the next message was ready, got "now" (one of those
    # three), and claimed again at once on the other lane: 11,000 rounds of ten index scans in a 20,000-run burst.
    few = settings.model_copy(update={"concurrency": 2})
    message = queue.Message("noop", run_message().wire(), 1, priority=priority)
    await queue.enqueue(pool, [message] * 5)
    async with _keeping(pool, few, monkeypatch) as (intake, got, claims):
        await wait_until(lambda: _count(got, 2), timeout=5, what="the lane to fill")
        before = claims.made
        await asyncio.sleep(1.5)
        assert len(got) == 2
        assert claims.made - before <= 4, f"{claims.made - before} claims in 1.5 s with no room for a message"
        intake.done(got[0])  # room for one: the next message is taken at once
        await wait_until(lambda: _count(got, 3), timeout=2, what="the next message to be taken")


async def _count(got: list[Delivery], n: int) -> bool:
    return len(got) == n


async def _append(got: list[Delivery], delivery: Delivery) -> None:
    got.append(delivery)


async def _some(got: list[Delivery]) -> bool:
    return bool(got)
