"""The processor's intake over PostgreSQL (processor/pg_intake.py): the delivery limit, and what a stopping processor
hands back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

import processor.service
from taskmill.models import Schedule
from taskmill.settings import Settings
from taskmill.states import ScheduleKind
from tests.helpers import new_task, running, statuses, wait_until
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
