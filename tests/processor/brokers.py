"""The test's own look at the broker, for the processor tests: a copy of everything the distributor publishes (a
queue of the test's bound to the runs exchange beside the work queue), raw publishes, queue counts."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aio_pika.abc import AbstractChannel, AbstractQueue

import distributor.service
import processor.service
from taskmill.messages import amqp_message
from taskmill.settings import Settings
from taskmill.topology import Topology


@dataclass(slots=True)
class Broker:
    channel: AbstractChannel
    topology: Topology
    copies: AbstractQueue

    async def take_copy(self) -> bytes:
        """The oldest message published to the runs exchange that the test has not taken yet."""
        message = await self.copies.get(no_ack=True)
        return message.body

    async def publish(self, body: bytes, task_type: str, run_id: int = 0) -> None:
        await self.topology.runs.publish(amqp_message(body, run_id), routing_key=task_type, mandatory=True)

    async def count(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count


@dataclass(slots=True)
class QueueRows:
    """The same look over the PostgreSQL transport: the distributor's messages wait as rows until a processor acks
    them, so a copy is taken by reading the oldest row not taken yet."""

    database_url: str
    taken: int = 0  # the highest message id taken

    async def take_copy(self) -> bytes:
        conn = await asyncpg.connect(self.database_url)
        try:
            row = await conn.fetchrow(
                "SELECT id, body FROM run_queue WHERE queue = 'work' AND id > $1 ORDER BY id LIMIT 1", self.taken
            )
        finally:
            await conn.close()
        assert row is not None, "no message published since the last copy taken"
        self.taken = row["id"]
        body: bytes = row["body"]
        return body


async def distribute(settings: Settings) -> None:
    await distributor.service.run(settings, until_idle=True)


async def process(settings: Settings) -> None:
    """Consumes until the work queue is empty and nothing is in flight."""
    await processor.service.run(settings, until_idle=True)
