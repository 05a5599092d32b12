"""Deliveries from PostgreSQL (the `run_queue` table): claimed a batch at a time with `FOR UPDATE SKIP LOCKED`,
never more held than the concurrency (the prefetch) in each of two lanes, leased and renewed while held, settled in
batches. The lanes are those of RabbitMQ's work queue and its urgent lane: messages of priority 1-9 are held apart
from those of 0, so an urgent message is taken while a backlog's messages fill the normal lane (and then takes the
next free slot, processor/slots.py).

The fetch loop claims as many messages as each lane has room for; when it got fewer it sleeps until a NOTIFY says
work was added, until the next message falls ready (a retry's delay, an expired lease), until a settlement makes
room in a full lane, or `max_idle_s`; when both lanes are full it sleeps until a settlement makes room. Every third
of `queue_lease_s` it renews the leases of what it holds: a processor that died stops renewing, and its messages are
handed out again when their leases run out.

Types (`--types`, taskmill/transport/routes.py): a dedicated processor claims its types only, and holds its presence
lock on the connection it listens on while it does; a general one claims every type but those of the dedicated
processors holding theirs. While it leaves types out it looks again every `Routes` refresh period at least: no
NOTIFY says that the last processor of a type stopped, or was killed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from processor.intake import Delivery, Handler
from taskmill.db import is_transient
from taskmill.logs import described
from taskmill.loops import Backoff, pause_if_transient, unless_stopped
from taskmill.settings import Settings
from taskmill.store import queue
from taskmill.store.processors import hold_presence, present
from taskmill.transport.routes import Routes
from taskmill.wakeup import Wakeup

log = logging.getLogger(__name__)

# How old the dedicated processors read may be, and how long a general processor that leaves types to them sleeps
# at most: a type whose last processor went is claimed again within about twice this.
ROUTES_RECHECK_S = 2.0


class PgIntake:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, worker: str, types: Sequence[str] | None = None) -> None:
        self._pool = pool
        self._settings = settings
        self._worker = worker
        self._types = None if types is None else list(types)  # dedicated to these; None: every other type
        self._routes = Routes(pool, ROUTES_RECHECK_S, serving=lambda found: present(pool, found))
        self._handler: Handler | None = None
        self._consuming = False
        self._held: dict[int, queue.Delivery] = {}
        self._room = asyncio.Event()  # set when a settlement frees a place
        self._acks: list[queue.Delivery] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._scheduled = False
        self._renewing: asyncio.Task[None] | None = None

    async def subscribe(self, handler: Handler) -> None:
        self._handler = handler
        self._consuming = True
        # Until close(): what is held is renewed while the processor drains too.
        self._renewing = asyncio.create_task(self._renew_loop())

    async def keep(self, stop: asyncio.Event, room: Callable[[], bool]) -> None:
        async with Wakeup(self._settings.database_url, queue.CHANNEL, self._present) as wakeup:
            await self._fetch_loop(stop, wakeup)

    async def _present(self, conn: asyncpg.Connection) -> None:
        if self._types is not None:
            await hold_presence(conn, self._worker)

    async def cancel(self) -> None:
        self._consuming = False

    async def ready(self) -> int:
        return await queue.ready(self._pool)

    def done(self, delivery: Delivery) -> None:
        message = self._settle(delivery)
        if message is None:
            return
        self._acks.append(message)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def requeue(self, delivery: Delivery) -> None:
        if (message := self._settle(delivery)) is not None:
            await self._retrying("requeue", queue.requeue, [message])

    async def reject(self, delivery: Delivery, reason: str) -> None:
        if (message := self._settle(delivery)) is not None:
            await self._retrying("reject", lambda pool, m: queue.reject(pool, m, reason), [message])

    async def close(self) -> None:
        self._flush()
        while self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)

    def _settle(self, delivery: Delivery) -> queue.Delivery | None:
        assert isinstance(delivery, queue.Delivery)
        message = self._held.pop(delivery.id, None)
        self._room.set()
        return message

    def _flush(self) -> None:
        self._scheduled = False
        if not self._acks:
            return
        batch, self._acks = self._acks, []
        task = asyncio.ensure_future(self._retrying("ack", queue.ack, batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _retrying(
        self,
        what: str,
        statement: Callable[[asyncpg.Pool, Sequence[queue.Delivery]], Awaitable[None]],
        messages: list[queue.Delivery],
    ) -> None:
        """A settlement, tried again while the database is away (a few times: a message left unsettled is handed
        out again when its lease ends, and its run's own state then drops it as a duplicate)."""
        backoff = Backoff(self._settings.db_retry_max_s)
        for attempt in range(5):
            try:
                await statement(self._pool, messages)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("%s of %d messages failed (try %d): %s", what, len(messages), attempt + 1, described(exc))
                await asyncio.sleep(backoff.next())
        log.warning("gave up the %s of %d messages: their leases bring them back", what, len(messages))

    def _rooms(self) -> dict[bool, int]:
        """Room in each lane (urgent: True)."""
        urgent = sum(1 for message in self._held.values() if message.priority > 0)
        held = {True: urgent, False: len(self._held) - urgent}
        return {lane: self._settings.concurrency - n for lane, n in held.items()}

    async def _fetch_loop(self, stop: asyncio.Event, wakeup: Wakeup) -> None:
        backoff = Backoff(self._settings.db_retry_max_s)
        while not stop.is_set() and self._consuming:
            self._room.clear()  # before the rooms are counted: a settlement from here on wakes the sleep below
            rooms = {lane: room for lane, room in self._rooms().items() if room > 0}
            if not rooms:
                await unless_stopped(stop, self._room.wait())
                continue
            try:
                if self._types is not None:
                    only, excluded = self._types, []
                else:  # every type but those live dedicated processors serve
                    only, excluded = [], sorted(await self._routes.dedicated())
                filled = False
                for urgent, room in sorted(rooms.items(), reverse=True):  # the urgent lane first
                    got = await queue.claim(
                        self._pool, room, self._worker, self._settings.queue_lease_s, only, excluded, urgent
                    )
                    await self._hand_out(got)
                    filled = filled or len(got) == room
                wait_s = None if filled else await queue.next_ready_in(self._pool, only, excluded, rooms)
            except Exception as exc:
                await pause_if_transient(exc, backoff, stop, "fetch")
                continue
            backoff.reset()
            if filled:
                continue  # a lane took all it had room for: more may be ready
            # Types left out come back when their dedicated processors go, which no NOTIFY tells.
            idle_s = self._settings.max_idle_s if not excluded else min(self._settings.max_idle_s, ROUTES_RECHECK_S)
            if wait_s is not None:
                idle_s = min(max(wait_s, 0.0), idle_s)
            # A lane that was full gets room when a settlement comes: a wait for work alone would leave it idle.
            await unless_stopped(stop, _first(wakeup.wait(idle_s), self._room.wait() if len(rooms) < 2 else None))

    async def _hand_out(self, got: list[queue.Delivery]) -> None:
        if not got:
            return
        assert self._handler is not None, "not subscribed"
        limit = self._settings.delivery_limit
        over = [message for message in got if message.delivery > limit]
        if over:
            # As a quorum queue's delivery limit: a message that keeps killing its processors goes to the dead.
            await self._retrying("reject", lambda pool, m: queue.reject(pool, m, "delivery limit reached"), over)
            log.error("dead-lettered %d messages over the delivery limit", len(over), extra={"action": "poison"})
        for message in got:
            if message.delivery <= limit:
                self._held[message.id] = message
                await self._handler(message)

    async def _renew_loop(self) -> None:
        lease_s = self._settings.queue_lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            held = list(self._held.values())
            try:
                await queue.renew(self._pool, held, lease_s)
            except Exception as exc:  # not fatal: at worst a message is handed out twice, and dropped as a duplicate
                log.warning("cannot renew the leases of %d messages: %s", len(held), described(exc))


async def _first(*waits: Awaitable[object] | None) -> None:
    """Returns when the first of `waits` (None: left out) returns; the others are cancelled."""
    jobs = [asyncio.ensure_future(w) for w in waits if w is not None]
    try:
        await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
