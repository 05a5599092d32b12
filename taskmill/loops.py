"""Running a role's background loops together: if one dies, the role stops loudly instead of limping on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from taskmill.db import is_transient
from taskmill.logs import described

log = logging.getLogger(__name__)

T = TypeVar("T")


async def wait_or_stop(stop: asyncio.Event, timeout: float) -> bool:
    """Sleeps up to `timeout` seconds; True as soon as `stop` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await stop.wait()
    return stop.is_set()


async def unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """Awaits `work` unless `stop` is set first; then `work` is cancelled and None returned. Raises what `work`
    raises."""
    job = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({job, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
    return job.result() if not job.cancelled() else None


async def run_loops(stop: asyncio.Event, **loops: Coroutine[Any, Any, None]) -> None:
    """Runs named loops until `stop` is set and they return; a loop that raises stops the others and re-raises
    (the first error out of a loop's own task group, not the group)."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in loops.items()]
    try:
        for finished in asyncio.as_completed(tasks):
            await finished
    except BaseException as exc:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if isinstance(exc, BaseExceptionGroup):
            raise first_error(exc) from exc
        raise


def first_error(error: BaseException) -> BaseException:
    """The first exception that is not a group, depth first."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def pause_if_transient(exc: Exception, backoff: Backoff, stop: asyncio.Event, what: str) -> None:
    """After a failed `what` (a claim, a fetch): raises `exc` again unless the database went away
    (`taskmill.db.is_transient`); else says so and waits the backoff's next pause, or until `stop`."""
    if not is_transient(exc):
        raise exc
    pause = backoff.next()
    log.warning("%s failed, will retry in %.1f s: %s", what, pause, described(exc), extra={"action": what})
    await wait_or_stop(stop, pause)


class Backoff:
    """Pauses between attempts at something that keeps failing (a database that went away): from `first`
    doubling up to `cap`, each shortened by a random part of up to a half so replicas do not retry in step."""

    def __init__(self, cap: float, first: float = 0.2) -> None:
        self._cap = cap
        self._first = min(first, cap)
        self._failures = 0

    def next(self) -> float:
        pause = min(self._cap, self._first * 2.0**self._failures)
        self._failures = min(self._failures + 1, 30)
        return pause * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._failures = 0
