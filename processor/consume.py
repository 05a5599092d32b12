"""From delivery to ack: claim the run, execute it, record the outcome, then ack. Never ack before recording."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

import asyncpg
import httpx
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from processor.acks import Acker
from processor.execute import Attempt, execute
from processor.gate import DueGate
from taskmill.batcher import Batcher
from taskmill.broker import Publisher
from taskmill.crash import Crash, CrashPoint
from taskmill.db import CONNECTION_ERRORS
from taskmill.loops import Backoff
from taskmill.messages import RunMessage
from taskmill.metrics import DUPLICATES, RUN_SECONDS, RUNS_FINISHED, START_LATENESS
from taskmill.secrets import SecretsError, open_sealed
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import Outcome, Start, StartRequest, finish_runs, finished_by, start_runs, started_by
from taskmill.tasktypes import RunContext

log = logging.getLogger(__name__)

_EARLY_RETRY_S = 0.01
_MAX_CLOCK_SKEW_S = 300.0
_DB_ERRORS = (*CONNECTION_ERRORS, RuntimeError)


def decide(message: RunMessage, attempt: Attempt) -> RunState:
    if attempt.ok:
        return RunState.SUCCEEDED
    if not attempt.permanent and message.attempt <= message.max_retries:
        return RunState.RETRYING
    # Retries were asked for and are spent: the run is dead-lettered. Without retries it simply failed.
    return RunState.DEAD if message.max_retries > 0 else RunState.FAILED


class Consumer:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        publisher: Publisher,
        http: httpx.AsyncClient,
        worker: str,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._publisher = publisher
        self._http = http
        self._worker = worker
        self._starter: Batcher[StartRequest, Start] = Batcher(partial(start_runs, pool, worker), name="start")
        self._finisher: Batcher[Outcome, bool] = Batcher(partial(_finish, pool), name="finish")
        self._in_flight: set[asyncio.Task[None]] = set()
        self._claimed: set[tuple[int, int]] = set()  # (run, attempt) this process is running
        self._acker = Acker()
        self._stopping = False
        self._gate = DueGate()
        self._crash = Crash(settings.crash_at)

    def start(self) -> None:
        self._starter.start()
        self._finisher.start()

    async def drain(self) -> None:
        """Lets every run in flight finish and record its outcome; deliveries not yet started go back."""
        self._stopping = True
        self._gate.open_all()
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        await self._acker.close()
        await self._starter.close()
        await self._finisher.close()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def on_message(self, delivery: AbstractIncomingMessage) -> None:
        """Hands the delivery to a task of our own: aiormq cancels its callback tasks when the channel closes, and
        a run in flight must still finish and be recorded (its redelivery then finds it started)."""
        self._acker.received(delivery)
        task = asyncio.create_task(self._handle(delivery))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

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
        timeout_s = min(message.timeout_s, self._settings.max_timeout_s)
        request = StartRequest(message.run_id, message.attempt, timeout_s + self._settings.running_grace_s)
        start = await self._start_when_due(message, request)
        if start is None:  # stopping: another processor takes it
            await self._requeue(delivery)
            return
        if start is Start.UNKNOWN:
            # Well-formed but of no run of ours (a forged message, another installation's, a dropped database):
            # acked as a duplicate it would vanish, so it goes where an operator looks.
            await self._dead_letter(delivery, f"unknown run id {message.run_id}", message.run_id)
            return
        if start is not Start.WON:
            # Already started elsewhere, finished, or a stale attempt: the database holds the truth.
            DUPLICATES.inc()
            self._acker.done(delivery)
            return
        claim = (message.run_id, message.attempt)
        self._claimed.add(claim)
        try:
            await self._run(delivery, message, timeout_s)
        finally:
            self._claimed.discard(claim)

    async def _run(self, delivery: AbstractIncomingMessage, message: RunMessage, timeout_s: float) -> None:
        if message.attempt == 1:
            START_LATENESS.observe(max(0.0, (datetime.now(UTC) - message.scheduled_time).total_seconds()))
        try:
            secrets = open_sealed(self._settings.secret_key, message.secrets) if message.secrets else {}
        except SecretsError as exc:
            # No attempt on this processor can read it: the run is dead and its message dead-lettered, retries or not.
            await self._record(message, Attempt(False, None, str(exc), 0.0, permanent=True), RunState.DEAD)
            self._acker.done(delivery)
            return
        ctx = RunContext(
            message.run_id,
            message.task_id,
            message.attempt,
            timeout_s,
            self._settings.output_cap_bytes,
            self._http,
            secrets,
            max_response_bytes=self._settings.http_max_response_bytes,
        )
        attempt = await execute(message, ctx)
        self._crash.at(CrashPoint.AFTER_SIDE_EFFECT)
        await self._record(message, attempt)
        self._acker.done(delivery)

    async def _start_when_due(self, message: RunMessage, request: StartRequest) -> Start | None:
        """Holds a run published ahead of its time until it is due, then claims it; None when stopping."""
        await self._gate.wait(message.scheduled_time.timestamp())
        backoff = Backoff(self._settings.db_retry_max_s)
        uncertain = False  # a claim went out and no answer came back: it may have committed
        while not self._stopping:
            try:
                start = await self._starter.submit(request)
                if start is Start.LOST and uncertain:
                    start = await self._resume(request)
            except _DB_ERRORS as exc:
                # Hold the delivery rather than requeue it: requeues count toward the broker's delivery limit.
                log.warning("cannot start run %s yet: %s", message.run_id, exc, extra={"run_id": message.run_id})
                uncertain = True
                await asyncio.sleep(backoff.next())
                continue
            if start is not Start.EARLY:
                return start
            # Due by our clock, not yet by the database's: the database decides, so ask again shortly.
            await asyncio.sleep(_EARLY_RETRY_S)
        return None

    async def _resume(self, request: StartRequest) -> Start:
        """After a claim whose reply was lost: won if it committed and no other copy in this process runs it.
        Otherwise the run would sit in running until its lease ran out and the rescuer spent an attempt on it."""
        if not await started_by(self._pool, self._worker, request):
            return Start.LOST
        if (request.run_id, request.attempt) in self._claimed:  # checked after the await: no await until added
            return Start.LOST
        log.info("run %s: the claim committed though its reply was lost", request.run_id)
        return Start.WON

    async def _dead_letter(self, delivery: AbstractIncomingMessage, reason: str, run_id: int | None = None) -> None:
        """A message no run can come of: to the dead-letter queue as it came, with the reason; then acked."""
        try:
            await self._publisher.publish_dead(delivery.body, run_id, reason, kind="poison")
        except Exception as exc:
            # The work queue dead-letters what is rejected: the message still ends in the dead queue.
            log.warning("dead-letter publish failed (%s); rejecting instead", exc, extra={"action": "poison"})
            await delivery.reject(requeue=False)
            self._acker.settled(delivery)
        else:
            self._acker.done(delivery)
        log.error("dead-lettered a message: %s", reason[:200], extra={"action": "poison"})

    async def _requeue(self, delivery: AbstractIncomingMessage) -> None:
        await delivery.nack(requeue=True)
        self._acker.settled(delivery)  # only now: until the nack is out, no multiple ack may reach over it

    async def _record(self, message: RunMessage, attempt: Attempt, status: RunState | None = None) -> None:
        status = status or decide(message, attempt)
        RUNS_FINISHED.labels(message.type, status.value).inc()
        RUN_SECONDS.labels(message.type).observe(attempt.duration_ms / 1000)
        delay_ms = message.retry_delay_ms()
        outcome = Outcome(
            run_id=message.run_id,
            attempt=message.attempt,
            status=status,
            result_json=attempt.result_json(),
            error=attempt.error and attempt.error.replace("\x00", "\ufffd"),
            finished_at=datetime.now(UTC),
            duration_ms=attempt.duration_ms,
            retry_lease_s=delay_ms / 1000 + self._settings.queued_lease_s,
            type=message.type,
        )
        recorded = await self._record_until_done(outcome)
        log.info(
            "run %s attempt %s %s",
            message.run_id,
            message.attempt,
            status.value,
            extra={"run_id": message.run_id, "task_id": message.task_id, "action": status.value},
        )
        if not recorded:
            return  # the rescuer gave this run to someone else meanwhile
        self._crash.at(CrashPoint.AFTER_RECORD)
        try:
            if status is RunState.RETRYING:
                await self._publisher.publish_delayed(message.next_attempt(), message.run_id, message.type, delay_ms)
            elif status is RunState.DEAD:
                await self._publisher.publish_dead(
                    message.model_dump_json().encode(), message.run_id, attempt.error or "failed"
                )
            else:
                return
        except Exception as exc:  # the row's lease brings a lost retry back through the rescuer
            log.warning("publish after run %s failed: %s", message.run_id, exc, extra={"run_id": message.run_id})
            return
        self._crash.at(CrashPoint.AFTER_PUBLISH)

    async def _record_until_done(self, outcome: Outcome) -> bool:
        backoff = Backoff(self._settings.db_retry_max_s)
        uncertain = False  # a record went out and no answer came back: it may have committed
        while True:
            try:
                done = await self._finisher.submit(outcome)
                if not done and uncertain:
                    # Committed with its reply lost: still ours to follow up (the retry or the dead letter).
                    done = await finished_by(self._pool, self._worker, outcome)
                return done
            except _DB_ERRORS as exc:
                log.warning("cannot record run %s yet: %s", outcome.run_id, exc, extra={"run_id": outcome.run_id})
                uncertain = True
                await asyncio.sleep(backoff.next())


async def _finish(pool: asyncpg.Pool, outcomes: Sequence[Outcome]) -> list[bool]:
    try:
        return await finish_runs(pool, outcomes)
    except asyncpg.DataError:
        if len(outcomes) == 1:
            raise
    # One outcome the database refuses must not hold back the others: record each alone.
    return [await _finish_alone(pool, outcome) for outcome in outcomes]


async def _finish_alone(pool: asyncpg.Pool, outcome: Outcome) -> bool:
    try:
        (done,) = await finish_runs(pool, [outcome])
    except asyncpg.DataError as exc:
        error = f"{outcome.error or 'result'} (result not stored: {exc})"
        (done,) = await finish_runs(pool, [replace(outcome, result_json=None, error=error)])
    return done
