"""Recording an attempt's outcome, batched across runs, then sending on what follows it: the retry's delayed message
or the dead letter. The outcome is recorded before anything is published or acked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

import asyncpg

from processor.execute import Attempt
from taskmill.alerts import Alerter
from taskmill.batcher import Batcher
from taskmill.crash import Crash, CrashPoint
from taskmill.db import is_transient
from taskmill.logs import described
from taskmill.loops import Backoff
from taskmill.messages import RunMessage
from taskmill.metrics import RUN_SECONDS, RUNS_FINISHED
from taskmill.settings import Settings
from taskmill.states import RunState
from taskmill.store.runs import Outcome, finish_runs, finished_by, letters_refused, letters_sent
from taskmill.transport import Publisher

log = logging.getLogger(__name__)


def decide(message: RunMessage, attempt: Attempt) -> RunState:
    """The state an attempt leaves its run in. Attempts lost with their processor are not failures: they do not
    spend the task's retries (the rescuer counts them against a limit of their own)."""
    if attempt.ok:
        return RunState.WAITING if attempt.wait else RunState.SUCCEEDED
    if attempt.skipped:
        return RunState.SKIPPED
    if not attempt.permanent and message.attempt - message.lost <= message.max_retries:
        return RunState.RETRYING
    # Retries were asked for and are spent: the run is dead-lettered. Without retries it simply failed.
    return RunState.DEAD if message.max_retries > 0 else RunState.FAILED


class Recorder:
    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, publisher: Publisher, worker: str, alerter: Alerter | None = None
    ) -> None:
        self._settings = settings
        self._alerter = alerter or Alerter("")
        self._pool = pool
        self._publisher = publisher
        self._worker = worker
        self._finisher: Batcher[Outcome, bool] = Batcher(partial(_finish, pool), name="finish")
        self._crash = Crash(settings.crash_at)

    def start(self) -> None:
        self._finisher.start()

    async def close(self) -> None:
        await self._finisher.close()

    async def record(self, message: RunMessage, attempt: Attempt, status: RunState | None = None) -> None:
        """Records the attempt (waiting out a database that went away), then publishes its retry or dead letter."""
        status = status or decide(message, attempt)
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
            scheduled_time=message.scheduled_time,
            retry_lease_s=delay_ms / 1000 + self._settings.queued_lease_s,
            type=message.type,
        )
        recorded = await self._record_until_done(outcome)
        log.info(
            "run %s attempt %s %s%s",
            message.run_id,
            message.attempt,
            status.value,
            f": {outcome.error[:300]}" if outcome.error else "",
            extra={"run_id": message.run_id, "task_id": message.task_id, "action": status.value},
        )
        if not recorded:
            return  # the rescuer gave this run to someone else meanwhile
        if status is RunState.DEAD:  # counted there, as the rescuer's dead runs are
            self._alerter.dead(
                message.run_id, message.task_id, message.type, message.attempt, message.scheduled_time, outcome.error
            )
        else:
            RUNS_FINISHED.labels(message.type, status.value).inc()
        self._crash.at(CrashPoint.AFTER_RECORD)
        try:
            if status is RunState.RETRYING:
                await self._publisher.publish_delayed(
                    message.next_attempt(), message.run_id, message.type, delay_ms, message.priority
                )
            elif status is RunState.DEAD:
                await self._publisher.publish_dead(message.wire(), message.run_id, attempt.error or "failed")
                # Confirmed: no more owed. (Refused, or lost with this process: the rescuer sends it once the
                # lease the record gave it ends.)
                await letters_sent(self._pool, [message.run_id])
            else:
                return
        except Exception as exc:  # the row's lease brings a lost retry or dead letter back through the rescuer
            log.warning(
                "publish after run %s failed: %s", message.run_id, described(exc), extra={"run_id": message.run_id}
            )
            if status is RunState.DEAD:
                with contextlib.suppress(Exception):  # else the lease the record gave it ends first
                    await letters_refused(self._pool, [message.run_id])
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
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning(
                    "cannot record run %s yet: %s", outcome.run_id, described(exc), extra={"run_id": outcome.run_id}
                )
                uncertain = True
                await asyncio.sleep(backoff.next())


async def _finish(pool: asyncpg.Pool, outcomes: Sequence[Outcome]) -> list[bool]:
    try:
        return await finish_runs(pool, outcomes)
    except asyncpg.DataError:
        pass
    # One outcome the database refuses must not hold back the others: record each alone, and one whose result
    # cannot be stored without it.
    return [await _finish_alone(pool, outcome) for outcome in outcomes]


async def _finish_alone(pool: asyncpg.Pool, outcome: Outcome) -> bool:
    try:
        (done,) = await finish_runs(pool, [outcome])
    except asyncpg.DataError as exc:
        error = f"{outcome.error or 'result'} (result not stored: {exc})"
        (done,) = await finish_runs(pool, [replace(outcome, result_json=None, error=error)])
    return done
