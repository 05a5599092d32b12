"""Moving an installation from the PostgreSQL transport to RabbitMQ (set AMQP_URL, restart): the messages the
PostgreSQL transport still holds (`run_queue`) are published to the broker, a batch per transaction, and deleted
once it confirmed them. Ready messages go at once, a retry waiting out its delay goes to a delay queue for the rest
of it. A message a live processor of the old transport holds is left to it: it settles it there when it finishes,
or its lease runs out (it died) and it is handed over then. Dead letters stay in the table for an operator.

Nothing is lost either way: were a message never handed over, its run's own lease would bring it back through the
rescuer.
"""

from __future__ import annotations

import logging

import asyncpg

from taskmill.store import queue
from taskmill.transport import Publisher

log = logging.getLogger(__name__)


async def hand_over(pool: asyncpg.Pool, publisher: Publisher, batch: int = 500) -> int:
    """Moves what the PostgreSQL transport left to `publisher`; returns how many messages it moved."""
    moved = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            found = await queue.leftovers(conn, batch)
            for message in found:
                if message.delay_s > 0:
                    delay_ms = max(1, round(message.delay_s * 1000))
                    await publisher.publish_delayed(
                        message.body, message.run_id, message.type, delay_ms, message.priority
                    )
                else:
                    await publisher.forward(message.body, message.run_id, message.type, message.priority)
            await queue.delete(conn, [m.id for m in found])
        moved += len(found)
        if found:
            log.info("handed %d messages of the PostgreSQL transport over", len(found), extra={"action": "handover"})
        if len(found) < batch:
            return moved
