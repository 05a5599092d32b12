"""Moving runs out of queues no processor consumes (distributor/reroute.py), one sweep at a time over RabbitMQ:
what moves where, what stays, and what a moved message keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue, HeadersType

from distributor.reroute import Rerouter
from taskmill.broker import AmqpPublisher
from taskmill.messages import batch_body
from taskmill.settings import Settings
from taskmill.store.processors import register
from taskmill.topology import Names, Topology, declare, declare_dedicated
from taskmill.transport import open_link
from tests.helpers import run_message, wait_until

NOOP = ["noop"]


@pytest.fixture
async def publisher(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[AmqpPublisher]:
    """The distributor's publisher, routing as it does (taskmill/transport/routes.py)."""
    link = await open_link(settings, "test-reroute", pool)
    assert isinstance(link.publisher, AmqpPublisher)
    try:
        yield link.publisher
    finally:
        await link.close()


@pytest.fixture
async def connection(settings: Settings) -> AsyncIterator[AbstractConnection]:
    opened = await aio_pika.connect(settings.amqp_url)
    async with opened:
        yield opened


@pytest.fixture
async def channel(connection: AbstractConnection) -> AbstractChannel:
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


async def _dedicated_processor(db: asyncpg.Connection, worker: str, types: list[str], *, live: bool) -> None:
    """A dedicated processor's row: seen now (live), or seen a minute ago (gone, as one that left is marked)."""
    await db.execute(
        "INSERT INTO processors (worker, command_isolation, types, seen_at) "
        "VALUES ($1, 'none', $2, now() - make_interval(secs => $3))",
        worker,
        types,
        0 if live else 60,
    )


async def _put(topology: Topology, key: str, body: bytes, run_id: int, headers: HeadersType | None = None) -> None:
    message = aio_pika.Message(
        body,
        message_id=str(run_id),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers or {},
    )
    await topology.runs.publish(message, routing_key=key, mandatory=True)


async def _ready(channel: AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    return queue.declaration_result.message_count or 0


async def _take_all(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    taken = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        taken.append(message)
    return taken


async def test_the_queue_of_gone_dedicated_processors_is_emptied_into_the_general_lanes_each_message_as_it_was(
    settings: Settings,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    publisher: AmqpPublisher,
    channel: AbstractChannel,
) -> None:
    topology = await declare(channel, settings)
    queue, urgent = await declare_dedicated(channel, topology, settings, NOOP)
    await _dedicated_processor(db, "gone:1", NOOP, live=False)
    single = run_message(run_id=11).wire()
    batch = batch_body([run_message(run_id=12).wire(), run_message(run_id=13).wire()])
    await _put(topology, "only.noop", single, 11, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    await _put(topology, "only.noop", batch, 12, {"x-taskmill-runs": "2"})
    await _put(topology, "urgent.only.noop", run_message(run_id=14, priority=4).wire(), 14)
    await _put(topology, "only.noop", b"not a run message", 15)

    assert await Rerouter(pool, publisher).sweep() == 4

    assert (await _ready(channel, queue.name), await _ready(channel, urgent.name)) == (0, 0)
    moved = await _take_all(topology.work)
    assert [(m.message_id, m.body, m.content_type, m.delivery_mode) for m in moved] == [
        ("11", single, "application/json", aio_pika.DeliveryMode.PERSISTENT),
        ("12", batch, "application/json", aio_pika.DeliveryMode.PERSISTENT),
    ]
    assert _ours(moved[0]) == {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    assert _ours(moved[1]) == {"x-taskmill-runs": "2"}
    assert [m.message_id for m in await _take_all(topology.urgent)] == ["14"]
    [dead] = await _take_all(topology.dead_letters)
    assert (dead.message_id, dead.body) == ("15", b"not a run message")
    assert (
        dead.headers["x-taskmill-reason"] == f"not a run message (found in {queue.name}, which no processor consumes)"
    )


async def test_runs_of_a_dedicated_type_leave_the_general_queue_nobody_consumes_and_the_others_stay_in_it(
    settings: Settings,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    publisher: AmqpPublisher,
    channel: AbstractChannel,
) -> None:
    topology = await declare(channel, settings)
    queue, urgent = await declare_dedicated(channel, topology, settings, NOOP)
    await _dedicated_processor(db, "here:1", NOOP, live=True)
    await queue.consume(_hold, consumer_tag="the-dedicated-processor")  # it takes work: the type routes to it
    await urgent.consume(_hold, consumer_tag="its-urgent-lane")
    await _put(topology, "noop", run_message(run_id=21).wire(), 21)
    await _put(topology, "sleep", run_message(run_id=22, type="sleep").wire(), 22)
    await _put(topology, "urgent.noop", run_message(run_id=23, priority=9).wire(), 23)

    assert await Rerouter(pool, publisher).sweep() == 2

    names = Names(settings.broker_prefix)
    assert await _ready(channel, names.work_queue) == 1  # the sleep run, back in the queue: no one else serves it
    assert [m.message_id for m in await _take_all(topology.work)] == ["22"]
    assert await _ready(channel, Names.urgent(names.work_queue)) == 0


async def test_a_queue_with_a_consumer_is_left_alone(
    settings: Settings,
    connection: AbstractConnection,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    publisher: AmqpPublisher,
    channel: AbstractChannel,
) -> None:
    topology = await declare(channel, settings)
    queue, _ = await declare_dedicated(channel, topology, settings, NOOP)
    await _dedicated_processor(db, "here:1", NOOP, live=True)
    await queue.consume(_hold)
    await _put(topology, "noop", run_message(run_id=31).wire(), 31)
    await _put(topology, "noop", run_message(run_id=32).wire(), 32)
    # A general processor at work, holding one message and with the other waiting for it.
    await register(db, "general:1", "none")
    processor = await connection.channel()
    await processor.set_qos(prefetch_count=1)
    await (await processor.get_queue(topology.work.name)).consume(_hold)

    assert await Rerouter(pool, publisher).sweep() == 0
    assert await _ready(channel, topology.work.name) == 1


def _ours(message: AbstractIncomingMessage) -> dict[str, object]:
    """Its headers but the one a quorum queue adds to each delivery."""
    return {k: v for k, v in message.headers.items() if k != "x-delivery-count"}


async def _hold(message: AbstractIncomingMessage) -> None:
    """A consumer that takes a delivery and never settles it."""


async def test_a_message_whose_route_now_reaches_no_queue_stays_where_it_was_until_it_does(
    settings: Settings,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    publisher: AmqpPublisher,
    channel: AbstractChannel,
) -> None:
    topology = await declare(channel, settings)
    queue, _ = await declare_dedicated(channel, topology, settings, NOOP)
    await _dedicated_processor(db, "gone:1", NOOP, live=False)
    await _put(topology, "only.noop", run_message(run_id=41).wire(), 41)
    await channel.queue_delete(topology.work.name)  # the broker returns what is published under "noop" now

    rerouter = Rerouter(pool, publisher)
    assert await rerouter.sweep() == 0

    async def put_back() -> bool:  # nacked back into the queue: the broker counts it again a moment later
        return await _ready(channel, queue.name) == 1

    await wait_until(put_back, 5, interval=0.1, what="the message back in its queue")

    await declare(channel, settings)
    assert await rerouter.sweep() == 1
    assert [m.message_id for m in await _take_all(topology.work)] == ["41"]


async def test_the_queue_of_a_stopping_dedicated_processor_is_emptied_while_it_finishes_its_run(
    settings: Settings,
    connection: AbstractConnection,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    publisher: AmqpPublisher,
    channel: AbstractChannel,
) -> None:
    topology = await declare(channel, settings)
    queue, _ = await declare_dedicated(channel, topology, settings, NOOP)
    # It left the processors table when it stopped taking work; its consumer holds its run's delivery, unacked.
    await _dedicated_processor(db, "stopping:1", NOOP, live=False)
    processor = await connection.channel()
    await processor.set_qos(prefetch_count=1)
    holding = await processor.get_queue(queue.name)
    tag = await holding.consume(_hold)
    for run_id in (51, 52, 53):
        await _put(topology, "only.noop", run_message(run_id=run_id).wire(), run_id)
    await holding.cancel(tag)
    assert (await _ready(channel, queue.name), await _consumers(channel, queue.name)) == (2, 1)

    assert await Rerouter(pool, publisher).sweep() == 2
    assert [m.message_id for m in await _take_all(topology.work)] == ["52", "53"]


async def _consumers(channel: AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    return queue.declaration_result.consumer_count or 0
