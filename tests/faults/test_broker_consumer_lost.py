"""A processor whose consumer the broker took away while its connection stays healthy (processor/watchdog.py).

The work queue deleted alone is what aio-pika repairs by itself (tests/faults/test_unroutable.py): it declares
the queue again and consumes on. Deleted together with the exchange it is bound to, the library's repair fails
on every attempt (it binds to an exchange that is gone) and the processor would sit idle forever, connected and
consuming nothing: the watchdog notices and subscribes again, declaring the whole topology. When even that
cannot work (the queue was declared again by someone else with arguments of its own) the processor stops with
an error, for its supervisor to start a fresh one, rather than idle silently.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.faults.harness import Stack
from tests.helpers import new_task, wait_until

pytestmark = pytest.mark.slow


async def _consumers(stack: Stack) -> int:
    depth = await stack.broker.depth(stack.broker.names.work_queue)
    return depth[1] if depth else 0


async def _delete_topology(stack: Stack) -> None:
    names = stack.broker.names
    async with stack.broker.channel() as channel:
        await channel.queue_delete(names.work_queue)
        await channel.exchange_delete(names.runs_exchange)


async def test_a_processor_whose_queue_and_exchange_vanished_subscribes_again_by_itself_and_loses_nothing(
    stack: Stack, db: asyncpg.Connection
) -> None:
    (processor,) = await stack.start(processor=1, TASKMILL_CONSUMER_CHECK_S="1")
    await _delete_topology(stack)

    async def consuming_again() -> bool:
        return await _consumers(stack) == 1

    await wait_until(consuming_again, 20, interval=0.25, what="the processor to consume again")
    assert "subscribing again" in processor.output(100_000)
    assert not processor.exited

    await stack.start(distributor=1)
    tasks = [await new_task(db, f"t{i}", "http", stack.target.payload(f"t{i}")) for i in range(10)]
    await stack.quiesce()
    report = await stack.check({t.id: 1 for t in tasks})
    assert report.statuses == {"succeeded": len(tasks)}


async def test_a_processor_that_cannot_subscribe_again_stops_with_an_error_instead_of_idling(stack: Stack) -> None:
    (processor,) = await stack.start(processor=1, TASKMILL_CONSUMER_CHECK_S="1")
    processor.expect_exit = True
    await _delete_topology(stack)
    # Declared again by someone else, as a classic queue: the processor's quorum declaration is refused.
    async with stack.broker.channel() as channel:
        await channel.declare_queue(stack.broker.names.work_queue, durable=True)

    code = await asyncio.wait_for(processor.proc.wait(), 60)
    assert code == 1, processor.output()
    assert "the work queue consumer cannot be restored" in processor.output(100_000)
