"""From delivery to ack: read the message, claim the run (processor/claim.py), execute it (processor/execute.py),
record the outcome (processor/record.py), then ack. Never ack before recording.

A delivery no run can come of goes to the dead-letter queue; one taken while stopping goes back to the queue. An
error that is not the database going away (a missing table, an SQL bug) stops the processor through `failed()`:
what it holds is never acked, so the broker hands it to another processor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import asyncpg
import httpx
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from processor.acks import CHANNEL_GONE, Acker
from processor.claim import Claimer
from processor.execute import Attempt, context, execute
from processor.record import Recorder
from taskmill.broker import Publisher
from taskmill.crash import Crash, CrashPoint
from taskmill.messages import RunMessage
from taskmill.metrics import DUPLICATES, START_LATENESS
from taskmill.secrets import SecretsError
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import Start
from taskmill.tasktypes.jail import Jail

log = logging.getLogger(__name__)

# No distributor publishes further ahead than its lead plus any plausible clock skew between hosts.
_MAX_CLOCK_SKEW_S = 300.0


class Consumer:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        publisher: Publisher,
        http: httpx.AsyncClient,
        jail: Jail,
        worker: str,
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._http = http
        self._jail = jail
        self._claimer = Claimer(pool, worker, settings.db_retry_max_s)
        self._recorder = Recorder(settings, pool, publisher, worker)
        self._acker = Acker()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._crash = Crash(settings.crash_at)
        self._failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self._claimer.start()
        self._recorder.start()

    async def drain(self) -> None:
        """Lets every run in flight finish and record its outcome; deliveries not yet started go back."""
        self._stopping = True
        self._claimer.stop()
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        await self._acker.close()
        await self._claimer.close()
        await self._recorder.close()

    async def failed(self) -> None:
        """Raises the first error a delivery's handling could not survive (for the processor's loops)."""
        await asyncio.shield(self._failure)

    def raise_failure(self) -> None:
        """Raises that error at once if there was one."""
        if self._failure.done():
            self._failure.result()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def on_message(self, delivery: AbstractIncomingMessage) -> None:
        """Hands the delivery to a task of our own: aiormq cancels its callback tasks when the channel closes, and
        a run in flight must still finish and be recorded (its redelivery then finds it started)."""
        self._acker.received(delivery)
        task = asyncio.create_task(self._handle(delivery))
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if not self._failure.done():
            self._failure.set_exception(exc)
        else:
            log.error("another delivery failed too: %s: %s", type(exc).__name__, exc)

    async def _handle(self, delivery: AbstractIncomingMessage) -> None:
        try:
            message = RunMessage.model_validate_json(delivery.body)
        except ValidationError as exc:
            await self._dead_letter(delivery, f"unreadable run message: {exc}"[:1000])
            return
        if self._stopping:
            await self._requeue(delivery)
            return
        ahead_s = message.scheduled_time.timestamp() - time.time()
        if ahead_s > self._settings.dispatch_lead_s + _MAX_CLOCK_SKEW_S:
            # No distributor publishes that early: held until due, it would take a prefetch slot for that long.
            await self._dead_letter(delivery, f"scheduled {ahead_s:.0f} s ahead: not a run message a distributor sent")
            return
        timeout_s = min(message.timeout_seconds, self._settings.max_timeout_s)
        start = await self._claimer.claim(message, timeout_s + self._settings.running_grace_s)
        if start is None:  # stopping: another processor takes it
            await self._requeue(delivery)
        elif start is Start.UNKNOWN:
            # Well-formed but of no run of ours (a forged message, another installation's, a dropped database):
            # acked as a duplicate it would vanish, so it goes where an operator looks.
            await self._dead_letter(delivery, f"unknown run id {message.run_id}", message.run_id)
        elif start is not Start.WON:
            # Already started elsewhere, finished, or a stale attempt: the database holds the truth.
            DUPLICATES.inc()
            self._acker.done(delivery)
        else:
            try:
                await self._run(message)
            finally:
                self._claimer.release(message)
            self._acker.done(delivery)

    async def _run(self, message: RunMessage) -> None:
        """Executes the attempt this process won and records its outcome."""
        if message.attempt == 1:
            START_LATENESS.observe(max(0.0, (datetime.now(UTC) - message.scheduled_time).total_seconds()))
        try:
            ctx = context(message, self._settings, self._http, self._jail)
        except SecretsError as exc:
            # No attempt on this processor can read it: the run is dead and its message dead-lettered, retries or not.
            await self._recorder.record(message, Attempt(False, None, str(exc), 0.0, permanent=True), RunState.DEAD)
            return
        attempt = await execute(message, ctx)
        self._crash.at(CrashPoint.AFTER_SIDE_EFFECT)
        await self._recorder.record(message, attempt)

    async def _dead_letter(self, delivery: AbstractIncomingMessage, reason: str, run_id: int | None = None) -> None:
        """A message no run can come of: to the dead-letter queue as it came, with the reason; then acked."""
        try:
            await self._publisher.publish_dead(delivery.body, run_id, reason, kind="poison")
        except Exception as exc:
            # The work queue dead-letters what is rejected: the message still ends in the dead queue.
            log.warning("dead-letter publish failed (%s); rejecting instead", exc, extra={"action": "poison"})
            try:
                await delivery.reject(requeue=False)
            except CHANNEL_GONE as reject_exc:
                # The channel closed: the broker hands the message out again, and it is read again.
                log.info("reject of delivery %s: %s", delivery.delivery_tag, reject_exc)
            self._acker.settled(delivery)
        else:
            self._acker.done(delivery)
        log.error("dead-lettered a message: %s", reason[:200], extra={"action": "poison"})

    async def _requeue(self, delivery: AbstractIncomingMessage) -> None:
        try:
            await delivery.nack(requeue=True)
        except CHANNEL_GONE as exc:  # the broker requeues it itself
            log.info("requeue of delivery %s: %s", delivery.delivery_tag, exc)
        self._acker.settled(delivery)  # only now: until the nack is out, no multiple ack may reach over it
