"""Execution slots: first come first served, a cancelled waiter never swallows a slot, closed when the processor
stops."""

from __future__ import annotations

import asyncio

import pytest

from processor.slots import Closed, Slots


async def test_slots_are_handed_out_in_order_and_never_more_than_there_are() -> None:
    slots = Slots(2)
    order: list[int] = []
    running = 0
    most = 0

    async def job(i: int) -> None:
        nonlocal running, most
        await slots.take()
        order.append(i)
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        slots.give()

    await asyncio.gather(*(job(i) for i in range(20)))
    assert order == list(range(20))
    assert most == 2


async def test_a_waiter_cancelled_as_it_is_given_a_slot_passes_it_on() -> None:
    slots = Slots(1)
    await slots.take()
    first = asyncio.ensure_future(slots.take())
    second = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    slots.give()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it runs: the slot goes on to `second`
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)
    third = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0.01)
    assert not third.done()  # one slot, held by `second`
    slots.give()
    await asyncio.wait_for(third, 1)


async def test_a_freed_slot_goes_to_the_most_urgent_waiter_first_come_among_equals() -> None:
    slots = Slots(1)
    await slots.take()
    order: list[str] = []

    async def job(name: str, priority: int) -> None:
        await slots.take(priority)
        order.append(name)
        slots.give()

    # Queued in this order behind the one slot, which is held.
    jobs = [("a0", 0), ("b0", 0), ("c5", 5), ("d9", 9), ("e5", 5), ("f0", 0)]
    waiting = [asyncio.ensure_future(job(name, priority)) for name, priority in jobs]
    await asyncio.sleep(0)
    cancelled = asyncio.ensure_future(slots.take(9))  # an urgent waiter that gives up passes its turn on
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    slots.give()
    await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert order == ["d9", "c5", "e5", "a0", "b0", "f0"]
    await asyncio.wait_for(slots.take(), 1)  # every slot came back


async def test_closing_turns_away_every_waiter_at_once_and_every_later_caller_and_keeps_the_slots_taken() -> None:
    slots = Slots(1)
    await slots.take()
    waiters = [asyncio.ensure_future(slots.take(priority)) for priority in (0, 5, 9)]
    await asyncio.sleep(0)
    slots.close()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(r) for r in results] == [Closed, Closed, Closed]
    with pytest.raises(Closed):
        await slots.take()
    assert slots.free == 0  # the run in flight keeps its slot until it gives it back
    slots.give()
    assert slots.free == 1
