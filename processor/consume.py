"""From delivery to ack: read the message, claim the run (processor/claim.py), execute it (processor/execute.py),
record the outcome (processor/record.py), then ack. Never ack before recording. Deliveries come from, and are settled
through, the transport's intake (processor/intake.py).

A delivery no run can come of goes to the dead letters; one taken while stopping goes back to the queue. An error
that is not the database going away (a missing table, an SQL bug) stops the processor through `failed()`: what it
holds is never acked, so the transport hands it to another processor.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import httpx
from pydantic import ValidationError

from processor.cancel import Stopper
from processor.claim import Claimer
from processor.execute import Attempt, context, execute
from processor.intake import Delivery, Intake
from processor.record import Recorder
from processor.slots import Closed, Slots
from taskmill import logs, tracing
from taskmill.alerts import Alerter
from taskmill.crash import Crash, CrashPoint
from taskmill.logs import described
from taskmill.loops import first_error
from taskmill.messages import RunMessage, read_runs
from taskmill.metrics import DUPLICATES, START_LATENESS
from taskmill.secrets import SecretsError
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import Start
from taskmill.tasktypes.jail import Jail
from taskmill.tracing import SpanKind
from taskmill.transport import Publisher
from taskmill.workerpool.pool import WorkerPool

log = logging.getLogger(__name__)

# No distributor publishes further ahead than its lead plus any plausible clock skew between hosts.
_MAX_CLOCK_SKEW_S = 300.0


@dataclass(frozen=True, slots=True)
class Poison:
    """A run message no run can come of, and why: it goes to the dead-letter queue."""

    reason: str


class _Handled(enum.Enum):
    DONE = "done"  # recorded, or not this message's to run (a duplicate): ack
    HANDED_BACK = "handed back"  # not started (stopping): requeue


DONE, HANDED_BACK = _Handled.DONE, _Handled.HANDED_BACK
Verdict = _Handled | Poison


class Consumer:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        publisher: Publisher,
        http: httpx.AsyncClient,
        jail: Jail,
        worker: str,
        intake: Intake,
        handler_pool: asyncpg.Pool | None = None,
        workers: WorkerPool | None = None,
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._http = http
        self._jail = jail
        self._claimer = Claimer(pool, worker, settings.db_retry_max_s)
        self._alerter = Alerter(settings.alert_webhook_url)
        self._recorder = Recorder(settings, pool, publisher, worker, self._alerter)
        self._stopper = Stopper(pool, settings.cancel_check_s)
        self._intake = intake
        self._handler_pool = handler_pool  # Python handlers' transactions (taskmill/handlers.py)
        self._spawn_pool = handler_pool or pool  # where http and command runs' spawns are created
        self._workers = workers  # where plain def handlers run (taskmill/workerpool/)
        # Runs executing at once: a message may carry several (a slot is taken before each claim).
        self._slots = Slots(settings.concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._crash = Crash(settings.crash_at)
        self._failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self._claimer.start()
        self._recorder.start()
        self._stopper.start()

    async def drain(self) -> None:
        """Lets every run in flight finish and record its outcome; deliveries not yet started go back."""
        self._stopping = True
        self._claimer.stop()
        self._slots.close()  # runs waiting for a slot go back now, not when a run in flight has finished
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        await self._intake.close()
        await self._claimer.close()
        await self._recorder.close()
        await self._stopper.close()
        await self._alerter.close()

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

    def slots_busy(self) -> int:
        """Execution slots in use now."""
        return self._settings.concurrency - self._slots.free

    async def on_message(self, delivery: Delivery) -> None:
        """Hands the delivery to a task of our own: aiormq cancels its callback tasks when the channel closes, and
        a run in flight must still finish and be recorded (its redelivery then finds it started)."""
        task = asyncio.create_task(self._handle(delivery))
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if not self._failure.done():
            self._failure.set_exception(first_error(exc))
        else:
            log.error("another delivery failed too: %s: %s", type(exc).__name__, exc)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            runs = read_runs(delivery.body)
        except ValidationError as exc:
            await self._dead_letter(delivery, f"unreadable run message: {exc}"[:1000])
            return
        if self._stopping:
            await self._intake.requeue(delivery)
            return
        # Its runs in turn, each once due and given a slot: a message waits for one slot at a time, not its runs
        # for theirs all at once.
        verdicts: list[Verdict | asyncio.Task[Verdict]] = []
        async with asyncio.TaskGroup() as group:
            for message in runs:
                if poison := self._too_early(message):
                    verdicts.append(poison)
                    continue
                await self._claimer.until_due(message)
                try:
                    await self._slots.take(message.priority)
                except Closed:  # stopping
                    verdicts.append(HANDED_BACK)
                    continue
                verdicts.append(group.create_task(self._handle_run(message)))
        await self._settle(delivery, runs, [v.result() if isinstance(v, asyncio.Task) else v for v in verdicts])

    async def _settle(self, delivery: Delivery, runs: list[RunMessage], verdicts: list[Verdict]) -> None:
        """Acks the delivery once every run in it is done; dead-letters what no run can come of (a message of one
        run as it came, a run of several alone); hands it back when a run of it was not started."""
        if len(runs) == 1:
            (verdict,) = verdicts
            if isinstance(verdict, Poison):
                await self._dead_letter(delivery, verdict.reason, runs[0].run_id)
            elif verdict is HANDED_BACK:
                await self._intake.requeue(delivery)
            else:
                self._intake.done(delivery)
            return
        back = False
        for message, verdict in zip(runs, verdicts, strict=True):
            if isinstance(verdict, Poison):
                verdict = DONE if await self._dead_letter_run(message, verdict.reason) else HANDED_BACK
            back = back or verdict is HANDED_BACK
        if back:
            # The whole message goes back; its runs that ended are dropped as duplicates when it comes again.
            await self._intake.requeue(delivery)
        else:
            self._intake.done(delivery)

    def _too_early(self, message: RunMessage) -> Poison | None:
        ahead_s = message.scheduled_time.timestamp() - time.time()
        if ahead_s > self._settings.dispatch_lead_s + _MAX_CLOCK_SKEW_S:
            # No distributor publishes that early: held until due, it would take a prefetch slot for that long.
            return Poison(f"scheduled {ahead_s:.0f} s ahead: not a run message a distributor sent")
        return None

    async def _handle_run(self, message: RunMessage) -> Verdict:
        """Claims, runs and records one run of a delivery, in a slot taken for it (given back here): DONE (recorded,
        or not this message's to run), HANDED_BACK (stopping before it started: another processor takes it), or
        Poison (no run can come of it)."""
        try:
            timeout_s = min(message.timeout_seconds, self._settings.max_timeout_s)
            start = await self._claimer.claim(message, timeout_s + self._settings.running_grace_s)
            if start is None:  # stopping: another processor takes it
                return HANDED_BACK
            if start is Start.UNKNOWN:
                # Well-formed but of no run of ours (a forged message, another installation's, a dropped database):
                # acked as a duplicate it would vanish, so it goes where an operator looks.
                return Poison(f"unknown run id {message.run_id}")
            if start is not Start.WON:
                # Already started elsewhere, finished, or a stale attempt: the database holds the truth.
                DUPLICATES.inc()
                return DONE
            try:
                await self._run(message)
            finally:
                self._claimer.release(message)
            return DONE
        finally:
            self._slots.give()

    async def _run(self, message: RunMessage) -> None:
        """Executes the attempt this process won and records its outcome, its log lines carrying the run's ids, in
        a span continuing the trace the message carries (taskmill/tracing.py)."""
        token = logs.enter_run(message.run_id, message.task_id)  # not a context manager: this is the hot path
        try:
            if not tracing.enabled():
                await self._attempt(message)
                return
            attributes: dict[str, str | int | float] = {
                "taskmill.run_id": message.run_id,
                "taskmill.task_id": message.task_id,
                "taskmill.task_type": message.type,
                "taskmill.attempt": message.attempt,
            }
            with tracing.span(f"run {message.type}", SpanKind.CONSUMER, attributes, message.traceparent):
                await self._attempt(message)
        finally:
            logs.leave_run(token)

    async def _attempt(self, message: RunMessage) -> None:
        if message.attempt == 1:
            START_LATENESS.observe(max(0.0, (datetime.now(UTC) - message.due_at()).total_seconds()))
        try:
            ctx = context(
                message, self._settings, self._http, self._jail, self._handler_pool, self._spawn_pool, self._workers
            )
        except SecretsError as exc:
            # No attempt on this processor can read it: the run is dead and its message dead-lettered, retries or not.
            await self._recorder.record(message, Attempt(False, None, str(exc), 0.0, permanent=True), RunState.DEAD)
            return
        attempt = await self._stopper.run(message.run_id, message.scheduled_time, execute(message, ctx))
        if attempt is None:
            return  # cancelled while it ran (overlap cancel_previous): nothing to record
        self._crash.at(CrashPoint.AFTER_SIDE_EFFECT)
        await self._recorder.record(message, attempt)

    async def _dead_letter(self, delivery: Delivery, reason: str, run_id: int | None = None) -> None:
        """A message no run can come of: to the dead letters as it came, with the reason; then settled."""
        try:
            await self._publisher.publish_dead(delivery.body, run_id, reason, kind="poison")
        except Exception as exc:
            # The transport's own dead-lettering: the message still ends with the dead letters.
            log.warning(
                "dead-letter publish failed (%s); rejecting instead", described(exc), extra={"action": "poison"}
            )
            await self._intake.reject(delivery, reason)
        else:
            self._intake.done(delivery)
        log.error("dead-lettered a message: %s", reason[:200], extra={"action": "poison"})

    async def _dead_letter_run(self, message: RunMessage, reason: str) -> bool:
        """One run of a several-run message to the dead-letter queue, alone; False when the broker did not take it
        (the whole message then goes back, and the run is read again)."""
        try:
            await self._publisher.publish_dead(message.wire(), message.run_id, reason, kind="poison")
        except Exception as exc:
            log.warning(
                "dead-letter publish of run %s failed: %s", message.run_id, described(exc), extra={"action": "poison"}
            )
            return False
        log.error("dead-lettered run %s: %s", message.run_id, reason[:200], extra={"action": "poison"})
        return True
