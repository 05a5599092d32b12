"""The distributor's reader of `<prefix>.submit` (RabbitMQ only): each request becomes a run (taskmill/submit.py),
recorded before the message is acked; a request no run can come of goes to the dead-letter queue with its reason.
While the database is away a request is held, not requeued, and tried again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from taskmill.broker import on_channel
from taskmill.db import is_transient
from taskmill.logs import described
from taskmill.loops import Backoff, wait_or_stop
from taskmill.settings import Settings
from taskmill.submit import Allowed, Refused, submit
from taskmill.topology import declare_submit
from taskmill.transport import Publisher

log = logging.getLogger(__name__)

# Requests read at once (each is a short transaction).
_PREFETCH = 20


async def serve(
    connection: AbstractRobustConnection,
    pool: asyncpg.Pool,
    publisher: Publisher,
    settings: Settings,
    stop: asyncio.Event,
) -> None:
    """Consumes run requests until `stop`."""
    allowed = Allowed.of(settings.submit_types)

    async def handle(message: AbstractIncomingMessage) -> None:
        backoff = Backoff(settings.db_retry_max_s)
        while True:
            try:
                async with pool.acquire() as conn:
                    run_id = await submit(conn, message.body, allowed=allowed)
            except Refused as exc:
                await _refuse(publisher, message, str(exc))
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("cannot record a run request yet: %s", described(exc), extra={"action": "submit"})
                if await wait_or_stop(stop, backoff.next()):
                    return  # unacked: the broker hands it out again
                continue
            await message.ack()
            log.info("run %s requested", run_id, extra={"run_id": run_id, "action": "submit"})
            return

    opened = await _open(connection, settings, stop, handle)
    if opened is None:
        return
    channel, (queue, tag) = opened
    try:
        await stop.wait()
    finally:
        await queue.cancel(tag)
        await channel.close()


async def _open(
    connection: AbstractRobustConnection,
    settings: Settings,
    stop: asyncio.Event,
    handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
) -> tuple[AbstractChannel, tuple[AbstractQueue, str]] | None:
    """A channel, the submit queue declared on it and `handle` consuming it (its consumer tag), tried again while
    the broker connection is lost (the robust connection restores all three once they exist); None when `stop`
    came first. The consume is inside the retry: a broker that refuses two distributors declaring the quorum queue
    at once closes the connection just after the declare (RabbitMQ 3.10: INTERNAL_ERROR)."""
    backoff = Backoff(settings.db_retry_max_s)

    async def prefetching(connection: AbstractRobustConnection) -> AbstractChannel:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=_PREFETCH)
        return channel

    async def again(exc: Exception) -> bool:
        log.warning("cannot open the submit queue yet: %s", described(exc), extra={"action": "submit"})
        return not await wait_or_stop(stop, backoff.next())

    async def consuming(channel: AbstractChannel) -> tuple[AbstractQueue, str]:
        queue = await declare_submit(channel, settings)
        return queue, await queue.consume(handle)

    return await on_channel(connection, prefetching, consuming, again)


async def _refuse(publisher: Publisher, message: AbstractIncomingMessage, reason: str) -> None:
    try:
        await publisher.publish_dead(message.body, None, reason, kind="refused request")
    except Exception as exc:  # the submit queue dead-letters what is rejected, without the reason
        log.warning("dead-letter publish failed (%s); rejecting instead", described(exc), extra={"action": "submit"})
        await message.reject(requeue=False)
    else:
        await message.ack()
    log.error("refused a run request: %s", reason[:300], extra={"action": "submit"})
