"""The tests' own look at the transport the settings use, RabbitMQ or PostgreSQL: what waits in the work and
dead-letter queues, the dead letters themselves, raw publishes.

`BOTH` parametrizes a test (or a module, as `pytestmark`) over the two transports: the `transport` fixture of
tests/conftest.py then gives each run settings of its own transport.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
import asyncpg
import pytest

from taskmill.messages import amqp_message
from taskmill.settings import Settings
from taskmill.store import queue
from taskmill.topology import Names, declare

BOTH = pytest.mark.parametrize("transport", ["amqp", "postgres"])


@dataclass(frozen=True, slots=True)
class DeadLetter:
    body: bytes
    run_id: str  # the message id
    reason: str


async def counts(settings: Settings) -> dict[str, int]:
    """Messages ready in the work queue and held in the dead-letter queue."""
    if settings.transport_name == "postgres":
        conn = await asyncpg.connect(settings.database_url)
        try:
            rows = await conn.fetch(
                "SELECT queue, count(*) FILTER (WHERE queue = 'dead' OR available_at <= now()) AS n "
                "FROM run_queue GROUP BY queue"
            )
        finally:
            await conn.close()
        found = {r["queue"]: int(r["n"]) for r in rows}
        return {"work": found.get(queue.WORK, 0), "dead": found.get(queue.DEAD, 0)}
    names = Names(settings.broker_prefix)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        result = {}
        for key, name in (("work", names.work_queue), ("dead", names.dead_queue)):
            declared = await channel.declare_queue(name, passive=True)
            assert declared.declaration_result.message_count is not None
            result[key] = declared.declaration_result.message_count
        return result


async def take_dead_letters(settings: Settings) -> list[DeadLetter]:
    """Takes every message off the dead-letter queue, oldest first."""
    if settings.transport_name == "postgres":
        conn = await asyncpg.connect(settings.database_url)
        try:
            rows = await conn.fetch("DELETE FROM run_queue WHERE queue = 'dead' RETURNING id, body, run_id, reason")
        finally:
            await conn.close()
        return [DeadLetter(r["body"], str(r["run_id"] or 0), r["reason"]) for r in sorted(rows, key=lambda r: r["id"])]
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        dead = await channel.declare_queue(Names(settings.broker_prefix).dead_queue, passive=True)
        count = dead.declaration_result.message_count
        letters = []
        while (message := await dead.get(no_ack=True, fail=False)) is not None:
            reason = (message.headers or {}).get("x-taskmill-reason", "")
            letters.append(DeadLetter(message.body, str(message.message_id), str(reason)))
        assert len(letters) == count
        return letters


async def publish(settings: Settings, body: bytes, task_type: str, run_id: int = 0) -> None:
    """A message into the work queue as a distributor would put it there (any body at all)."""
    if settings.transport_name == "postgres":
        conn = await asyncpg.connect(settings.database_url)
        try:
            await queue.enqueue(conn, [queue.Message(task_type, body, run_id)])
        finally:
            await conn.close()
        return
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = await declare(channel, settings)
        await topology.runs.publish(amqp_message(body, run_id), routing_key=task_type, mandatory=True)


async def waiting_retries(settings: Settings, task_type: str, delay_ms: int) -> int:
    """Retries of runs of `task_type` waiting out their delay (over RabbitMQ, in the delay queue of `delay_ms`)."""
    if settings.transport_name == "postgres":
        conn = await asyncpg.connect(settings.database_url)
        try:
            waiting: int = await conn.fetchval(
                "SELECT count(*) FROM run_queue WHERE queue = 'work' AND type = $1 AND available_at > now() "
                "AND leased_by IS NULL",
                task_type,
            )
        finally:
            await conn.close()
        return waiting
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        name = Names(settings.broker_prefix).delay_queue(delay_ms, task_type)
        declared = await channel.declare_queue(name, passive=True)
        assert declared.declaration_result.message_count is not None
        return declared.declaration_result.message_count
