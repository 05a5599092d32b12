"""Run requests from any language (taskmill/submit.py, distributor/requests.py): JSON published to `<prefix>.submit`
becomes a run as `defer` makes it; a request no run can come of lands in the dead-letter queue with its reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from aio_pika.robust_connection import RobustConnection

import distributor.service
import processor.service
from distributor import requests
from taskmill.db import role_pool
from taskmill.messages import amqp_message
from taskmill.settings import Settings
from taskmill.topology import Names, declare_submit
from taskmill.transport import Link, open_link
from tests.helpers import new_task, running, statuses, wait_for_statuses, wait_until
from tests.transports import counts, take_dead_letters


async def _publish(settings: Settings, *bodies: bytes) -> None:
    """Once a distributor reads the queue: confirmed and `mandatory`, as a producer should publish."""
    name = Names(settings.broker_prefix).submit_queue
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:

        async def consumed() -> bool:
            probe = await connection.channel()
            try:
                declared = await probe.declare_queue(name, passive=True)
                return bool(declared.declaration_result.consumer_count)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return False
            finally:
                if not probe.is_closed:
                    await probe.close()

        await wait_until(consumed, timeout=10, what="a distributor reading the submit queue")
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        for body in bodies:
            await channel.default_exchange.publish(amqp_message(body, 0), routing_key=name, mandatory=True)


def _json(**fields: object) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


async def test_requests_become_runs_once_per_idempotency_key_and_run(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await new_task(db, "nightly-report", "noop", {"report": True})
    await db.execute("DELETE FROM task_schedule")  # its own immediate run: only the requested ones count
    async with running(distributor.service.run, settings), running(processor.service.run, settings):
        await _publish(
            settings,
            _json(type="noop", payload={"n": 1}, idempotency_key="k-1"),
            _json(type="noop", payload={"n": 1}, idempotency_key="k-1"),  # the same request again
            _json(task="nightly-report"),
        )
        await wait_for_statuses(db, {"succeeded": 2})
    results = await db.fetch(
        "SELECT t.name, r.result FROM task_results r JOIN task_schedule s ON s.id = r.run_id "
        "JOIN tasks t ON t.id = s.task_id ORDER BY t.name"
    )
    assert [(r["name"], r["result"]) for r in results] == [
        ("defer:noop:k-1", {"n": 1}),
        ("nightly-report", {"report": True}),
    ]
    assert await take_dead_letters(settings) == []


async def test_requests_no_run_can_come_of_are_dead_lettered_with_the_reason(
    settings: Settings, db: asyncpg.Connection
) -> None:
    bad = {
        b"not json": "unreadable request: (request): Invalid JSON",
        _json(type="noop", task="x"): "unreadable request: (request): give exactly one of `type`",
        _json(type="billing.nope"): "type: unknown task type 'billing.nope' (no processor registered it)",
        _json(task="nobody"): "task: no task named 'nobody'",
        _json(type="sleep", payload={"ms": "long"}): "payload: does not fit type sleep",
    }
    async with running(distributor.service.run, settings):
        await _publish(settings, *bad)

        async def all_dead() -> bool:
            return (await counts(settings))["dead"] == len(bad)

        await wait_until(all_dead, timeout=10, what="every bad request in the dead-letter queue")
    letters = await take_dead_letters(settings)
    reasons = {letter.body: letter.reason for letter in letters}
    for body, start in bad.items():
        assert reasons[body].startswith(start), (body, reasons[body])
    assert await statuses(db) == {}


async def test_the_submit_queue_makes_no_command_run_unless_an_operator_names_command(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Anyone who may publish to the broker may send requests: they get what a tasks:write token gets, no more."""
    marker = tmp_path / "ran"
    command = _json(type="command", payload={"argv": ["/bin/touch", str(marker)]})
    await new_task(db, "touch-it", "command", {"argv": ["/bin/touch", str(marker)]})  # made with tasks:command
    await db.execute("DELETE FROM task_schedule")
    async with running(distributor.service.run, settings), running(processor.service.run, settings):
        await _publish(settings, command, _json(type="command", payload={"argv": ["/bin/true"]}, idempotency_key="x"))

        async def refused() -> bool:
            return (await counts(settings))["dead"] == 2

        await wait_until(refused, timeout=10, what="both command requests in the dead-letter queue")
        letters = await take_dead_letters(settings)
        assert {letter.reason for letter in letters} == {
            "type: the submit queue does not make command runs (in the API they need the scope tasks:command); an "
            "operator allows them by naming `command` in TASKMILL_SUBMIT_TYPES"
        }
        # A run of the existing command task, by name: what a tasks:write token's invoke may do.
        await _publish(settings, _json(task="touch-it"))
        await wait_for_statuses(db, {"succeeded": 1})
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE type = 'command'") == 1  # no task made of a request
    marker.unlink()

    allowing = settings.model_copy(update={"submit_types": "noop, command"})
    async with running(distributor.service.run, allowing), running(processor.service.run, allowing):
        await _publish(allowing, command, _json(type="sleep", payload={"ms": 1}))
        await wait_for_statuses(db, {"succeeded": 2})

        async def sleep_refused() -> bool:
            return (await counts(allowing))["dead"] == 1

        await wait_until(sleep_refused, timeout=10, what="the sleep request in the dead-letter queue")
    assert marker.exists()
    (letter,) = await take_dead_letters(allowing)
    assert letter.reason == "type: 'sleep' is not among the types the submit queue takes (noop, command)"


@asynccontextmanager
async def _reader_link(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, Link]]:
    """A distributor's pool and broker link, for a submit reader of the test's own."""
    pool = await role_pool(settings.database_url, max_size=2)
    link = await open_link(settings, "test-submit-reader", pool)
    try:
        assert link.connection is not None
        yield pool, link
    finally:
        await link.close()
        await pool.close()


async def _records_a_request(settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool, link: Link) -> None:
    """A reader started on `link` records a request published to the submit queue as a run, still reading
    afterwards, and ends when stopped."""
    assert link.connection is not None
    stop = asyncio.Event()
    reader = asyncio.create_task(requests.serve(link.connection, pool, link.publisher, settings, stop))
    try:
        await _publish(settings, _json(type="noop", payload={"n": 2}))
        await wait_for_statuses(db, {"scheduled": 1})  # the request, recorded as a run by this reader
        assert not reader.done(), reader
    finally:
        stop.set()
    await asyncio.wait_for(reader, 10)


async def test_the_submit_queue_is_opened_once_a_lost_broker_connection_comes_back(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """A distributor's connection closed by the broker as it opens the submit queue (RabbitMQ 3.10 closes it with
    INTERNAL_ERROR when two distributors declare the quorum queue at once): the reader waits for the robust
    connection to come back and opens the queue then, where it used to stop the distributor."""
    async with _reader_link(settings) as (pool, link):
        assert link.connection is not None
        transport = link.connection.transport
        assert transport is not None
        await transport.connection.close(ConnectionError("closed by the test"))  # as a broker's close arrives
        await _records_a_request(settings, db, pool, link)


async def test_the_submit_queue_is_opened_after_a_reconnect_that_was_under_way_when_the_reader_began(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the robust connection reconnects it has no transport, and aio-pika answers a new channel with
    RuntimeError("Connection was not opened"): the reader waits and tries again, where it used to stop (and the
    distributor with it). The window is a few milliseconds wide; here the first two channels meet it."""
    refusals = [RuntimeError("Connection was not opened")] * 2
    opened = RobustConnection.channel

    def channel(self: RobustConnection, *args: Any, **kwargs: Any) -> Any:
        if refusals:
            raise refusals.pop()
        return opened(self, *args, **kwargs)

    async with _reader_link(settings) as (pool, link):
        monkeypatch.setattr(RobustConnection, "channel", channel)
        await _records_a_request(settings, db, pool, link)
    assert not refusals


async def test_the_submit_queue_is_consumed_after_a_connection_closed_just_after_its_declare(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ closes a distributor's connection (INTERNAL_ERROR) when two declare the quorum queue at once, and
    the close may come after the declare answered: the consume then fails, and the reader opens the queue again
    once the connection is back, where it used to stop the distributor (seen in a suite run, two distributors
    starting together)."""
    closes = [ConnectionError("closed by the test")]
    async with _reader_link(settings) as (pool, link):
        assert link.connection is not None
        connection = link.connection

        async def declare_then_lose(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
            queue = await declare_submit(channel, settings)
            if closes:
                assert connection.transport is not None
                await connection.transport.connection.close(closes.pop())  # as the broker's close arrives
            return queue

        monkeypatch.setattr(requests, "declare_submit", declare_then_lose)
        await _records_a_request(settings, db, pool, link)
    assert not closes
