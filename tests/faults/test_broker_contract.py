"""What must hold between the code and the broker for nothing to be lost (issue 5, "Must hold in the code"):
durable queues with the arguments that keep work, persistent messages whose id is the run id on every publish
path, and a publish that reaches no queue failing instead of vanishing (mandatory, returns raised).

Held elsewhere: the compare-and-set that drops a delivery past queued (tests/processor/test_redelivery.py and
test_duplicates.py), status recorded before the ack (test_crash_points.py: after a crash past the record the
delivery is back in the queue), due checks by the database clock (tests/processor/test_redelivery.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

import distributor.service
import processor.service
from taskmill.broker import AmqpPublisher, connect
from taskmill.messages import CONTENT_TYPE
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import Outbound
from taskmill.tasktypes import BUILTIN
from taskmill.topology import Names, declare_delay_queue
from tests import services
from tests.helpers import new_task, running, wait_for_statuses

FAIL = {"argv": ["false"]}


async def _rabbitmqctl(*args: str) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        *services.rabbitmqctl(*args, "--formatter", "json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd="/",  # the CLI may run as the node's user, who may not enter this directory
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[AmqpPublisher]:
    connection = await connect(settings, "test")
    async with connection:
        yield await AmqpPublisher.open(connection, settings)


@pytest.fixture
async def spy(publisher: AmqpPublisher) -> AsyncIterator[AbstractQueue]:
    """A queue of the test's that receives a copy of every message sent to the runs and dead-letter exchanges."""
    channel: AbstractChannel = publisher.channel
    queue = await channel.declare_queue(exclusive=True)
    for type_name in BUILTIN:
        await queue.bind(publisher.topology.runs, routing_key=type_name)
    await queue.bind(publisher.topology.dead)
    yield queue
    await queue.delete(if_unused=False, if_empty=False)


async def _drain(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    taken = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        taken.append(message)
    return taken


def _persistent_with_run_id(message: AbstractIncomingMessage) -> tuple[str, int]:
    """(where it went, its run id), after checking it is a persistent JSON message whose id is its run id."""
    run_id = json.loads(message.body)["run_id"]
    where = f"{message.exchange} {message.routing_key}"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT, where
    assert message.message_id == str(run_id), where
    assert message.content_type == CONTENT_TYPE, where
    return where, run_id


async def test_every_queue_and_exchange_is_durable_with_the_arguments_that_keep_work(
    settings: Settings, publisher: AmqpPublisher
) -> None:
    names = Names(settings.broker_prefix)
    # As the processor declares it before publishing a retry (Publisher.publish_delayed).
    await declare_delay_queue(await publisher.channel.get_underlay_channel(), names, 30_000, "command")
    queues = {
        q["name"]: (q["durable"], q["type"], {a[0]: a[2] for a in q["arguments"]})
        for q in await _rabbitmqctl("list_queues", "name", "durable", "type", "arguments")
        if q["name"].startswith(names.prefix + ".")
    }
    # The broker counts deliveries and dead-letters a message that keeps killing its consumers.
    work = (
        True,
        "quorum",
        {
            "x-queue-type": "quorum",
            "x-delivery-limit": settings.delivery_limit,
            "x-dead-letter-exchange": names.dead_exchange,
        },
    )
    assert queues == {
        names.work_queue: work,
        Names.urgent(names.work_queue): work,  # the urgent lane, for runs of priority 1-9
        names.dead_queue: (True, "quorum", {"x-queue-type": "quorum"}),
        # A retry waits its delay here, then goes back to the runs exchange under its type.
        names.delay_queue(30_000, "command"): (
            True,
            "classic",
            {
                "x-message-ttl": 30_000,
                "x-dead-letter-exchange": names.runs_exchange,
                "x-dead-letter-routing-key": "command",
                "x-expires": 30_000 + 3_600_000,
            },
        ),
    }
    exchanges = {
        e["name"]: (e["type"], e["durable"])
        for e in await _rabbitmqctl("list_exchanges", "name", "type", "durable")
        if e["name"].startswith(names.prefix + ".")
    }
    assert exchanges == {names.runs_exchange: ("direct", True), names.dead_exchange: ("fanout", True)}
    assert publisher.channel.publisher_confirms


async def test_every_publish_path_sends_persistent_messages_whose_id_is_the_run_id(
    settings: Settings, db: asyncpg.Connection, publisher: AmqpPublisher, spy: AbstractQueue
) -> None:
    names = publisher.topology.names
    ok = await new_task(db, "ok", "noop")
    waits = await new_task(db, "waits", "command", FAIL, max_retries=1, retry_delay_seconds=60)
    dies = await new_task(db, "dies", "command", FAIL, max_retries=1, retry_delay_seconds=0.2)
    run_of = {r["task_id"]: r["id"] for r in await db.fetch("SELECT id, task_id FROM task_schedule")}

    # The distributor's claim and publish.
    await distributor.service.run(settings, until_idle=True)
    claimed = [_persistent_with_run_id(m) for m in await _drain(spy)]
    assert sorted(run for _, run in claimed) == sorted(run_of.values())

    # The processor: a retry through a delay queue (and back to the runs exchange), a dead letter.
    async with running(processor.service.run, settings):
        await wait_for_statuses(db, {"succeeded": 1, "retrying": 1, "dead": 1}, timeout=20)
    seen = [_persistent_with_run_id(m) for m in await _drain(spy)]
    assert sorted(seen) == sorted(
        [(f"{names.runs_exchange} command", run_of[dies.id]), (f"{names.dead_exchange} ", run_of[dies.id])]
    )
    delayed = await (await publisher.channel.declare_queue(names.delay_queue(60_000, "command"), passive=True)).get(
        no_ack=True
    )
    assert _persistent_with_run_id(delayed)[1] == run_of[waits.id]
    assert json.loads(delayed.body)["attempt"] == 2

    # The rescuer: a retry whose lease ran out is published again; a run that lost one processor too many goes dead.
    await db.execute("UPDATE task_schedule SET lease_until = now() - interval '1 s' WHERE id = $1", run_of[waits.id])
    lost = await new_task(db, "lost", "noop")
    lost_run = await db.fetchval(
        "UPDATE task_schedule SET status = 'running', attempt = $2 + 1, lost = $2, "
        "lease_until = now() - interval '1 s' WHERE task_id = $1 RETURNING id",
        lost.id,
        settings.lost_limit,
    )
    await distributor.service.run(settings, until_idle=True)
    rescued = [_persistent_with_run_id(m) for m in await _drain(spy)]
    assert sorted(rescued) == sorted(
        [(f"{names.runs_exchange} command", run_of[waits.id]), (f"{names.dead_exchange} ", lost_run)]
    )
    assert ok.id in run_of


async def test_a_publish_that_reaches_no_queue_fails_on_every_path_instead_of_vanishing(
    settings: Settings, publisher: AmqpPublisher
) -> None:
    names = publisher.topology.names
    body = json.dumps({"run_id": 7}).encode()
    work = Outbound(7, "noop", body, RunState.QUEUED)
    dead = Outbound(8, "noop", body, RunState.DEAD)
    assert await publisher.publish_runs([work, dead]) == [True, True]

    # Mandatory publishes come back as returns, and the publisher raises them: nothing is silently dropped.
    await publisher.channel.queue_delete(names.work_queue)
    await publisher.channel.queue_delete(names.dead_queue)
    assert await publisher.publish_runs([work, dead]) == [False, False]
    with pytest.raises(aiormq.exceptions.PublishError):
        await publisher.publish_dead(body, 9, "gave up")
    # publish_delayed declares its delay queue right before publishing to it, so it cannot be made unroutable
    # from outside; it publishes with mandatory=True on this same channel.


async def test_a_publisher_whose_connection_the_broker_closed_while_it_declared_declares_again(
    settings: Settings,
) -> None:
    """A role starting beside its replicas may have its connection closed as it declares the queues (RabbitMQ 3.10
    closes it with INTERNAL_ERROR when two declare one quorum queue at once): opening waits for the robust connection
    to come back and declares again, where it used to stop the role."""
    connection = await connect(settings, "test")
    async with connection:
        transport = connection.transport
        assert transport is not None
        await transport.connection.close(ConnectionError("closed by the test"))  # as a broker's close arrives
        publisher = await AmqpPublisher.open(connection, settings)
        assert await publisher.publish_runs([Outbound(1, "noop", b"{}", RunState.QUEUED)]) == [True]
