"""What a role retries and what stops it (taskmill.db.is_transient), and the batcher's own closed error."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from taskmill.batcher import Batcher, BatcherClosed
from taskmill.db import is_transient, retry_conflicts

TRANSIENT = [
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError(),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CrashShutdownError("terminating connection because of crash of another server process"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.SerializationError("could not serialize access due to concurrent update"),
    asyncpg.DeadlockDetectedError("deadlock detected"),
    asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
    asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
]
FOR_GOOD = [
    asyncpg.UndefinedTableError('relation "task_schedule" does not exist'),
    asyncpg.UndefinedColumnError('column "lost" does not exist'),
    asyncpg.PostgresSyntaxError('syntax error at or near "SELEC"'),
    asyncpg.CheckViolationError("illegal run transition scheduled -> succeeded"),
    asyncpg.InvalidCatalogNameError('database "taskmill" does not exist'),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    BatcherClosed("start closed before this request was sent"),
    KeyError("status"),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_the_database_going_away_or_a_conflict_it_settles_is_tried_again(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", FOR_GOOD, ids=lambda e: type(e).__name__)
def test_an_error_that_would_fail_the_same_way_every_time_is_not(exc: BaseException) -> None:
    assert not is_transient(exc)


async def test_a_closed_batcher_fails_what_waits_and_what_comes_later_with_its_own_error() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def flush(items: object) -> list[int]:
        started.set()
        await release.wait()
        return [1]

    batcher: Batcher[int, int] = Batcher(flush, name="test")
    batcher.start()
    in_flight = asyncio.ensure_future(batcher.submit(1))
    await started.wait()
    waiting = asyncio.ensure_future(batcher.submit(2))  # gathers behind the batch in flight
    await asyncio.sleep(0)
    await batcher.close()
    with pytest.raises(BatcherClosed, match="test closed before this request was sent"):
        await waiting
    with pytest.raises(BatcherClosed, match="test is closed"):
        await batcher.submit(3)
    with pytest.raises(BatcherClosed, match="test closed while this request was in flight"):
        await in_flight  # its statement was cut off: the caller hears so, it is not left waiting for ever


async def test_a_transaction_rolled_back_to_settle_a_conflict_runs_again_and_other_errors_do_not() -> None:
    calls: list[int] = []

    async def deadlocks_twice() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return "done"

    assert await retry_conflicts(deadlocks_twice) == "done"
    assert len(calls) == 3

    async def always(exc: BaseException) -> None:
        calls.append(1)
        raise exc

    calls.clear()
    with pytest.raises(asyncpg.SerializationError):
        await retry_conflicts(lambda: always(asyncpg.SerializationError("could not serialize")), tries=4)
    assert len(calls) == 4  # then it gives up, with the conflict's own error
    calls.clear()
    with pytest.raises(asyncpg.UniqueViolationError):
        await retry_conflicts(lambda: always(asyncpg.UniqueViolationError("duplicate key")))
    assert len(calls) == 1  # not a conflict: never run again
