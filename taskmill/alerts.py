"""Dead runs (SPEC O4), reported in one place whichever role records them so (a processor that gave up on a run, or
the distributor's rescuer when a run lost too many processors): each dead run is recorded by exactly one process,
which counts it in taskmill_runs_finished_total{type, outcome="dead"} (the alert rule TaskmillDeadRuns) and, with
TASKMILL_ALERT_WEBHOOK_URL set, sends one JSON POST:

    {"event": "run.dead", "run_id": 42, "task_id": 7, "type": "http", "attempt": 3,
     "scheduled_time": "...", "error": "...", "at": "..."}

A POST that fails (no answer, a 5xx, a 429) is tried again after 1, 2, 4, 8 s; a 4xx other than 429 is not (the
receiver refused this body). Every try carries the same `Idempotency-Key: dead-<run id>-<attempt>`, for a
receiver to drop a repeat. Posting never holds up the run's recording: it goes on in the background, and a process
stopping waits a few seconds for what is still being sent. What a process killed meanwhile was sending is lost
(logged as it was queued): Prometheus's taskmill_runs_finished_total{outcome="dead"} counts every dead run anyway.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from taskmill.metrics import ALERTS_POSTED, RUNS_FINISHED

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)


class Alerter:
    def __init__(self, url: str, delays_s: tuple[float, ...] = RETRY_DELAYS_S, timeout_s: float = 5.0) -> None:
        self._url = url
        self._delays_s = delays_s
        self._http: httpx.AsyncClient | None = None
        if url:  # httpx only where a webhook is set: the distributor need not import it otherwise
            import httpx

            self._http = httpx.AsyncClient(timeout=timeout_s)
        self._sending: set[asyncio.Task[None]] = set()

    def dead(
        self, run_id: int, task_id: int, task_type: str, attempt: int, scheduled_time: datetime, error: str | None
    ) -> None:
        """Counts a run that ended dead, and sends its alert in the background (when a webhook is set)."""
        RUNS_FINISHED.labels(task_type, "dead").inc()
        if self._http is None:
            return
        alert = {
            "event": "run.dead",
            "run_id": run_id,
            "task_id": task_id,
            "type": task_type,
            "attempt": attempt,
            "scheduled_time": scheduled_time.isoformat(),
            "error": (error or "")[:2000],
            "at": datetime.now(UTC).isoformat(),
        }
        log.info("alerting of dead run %s", run_id, extra={"run_id": run_id, "task_id": task_id, "action": "alert"})
        task = asyncio.create_task(self._post(alert, f"dead-{run_id}-{attempt}"))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _post(self, alert: dict[str, Any], key: str) -> None:
        import httpx

        assert self._http is not None
        for try_, delay_s in enumerate((0.0, *self._delays_s), 1):
            await asyncio.sleep(delay_s)
            try:
                response = await self._http.post(self._url, json=alert, headers={"Idempotency-Key": key})
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    ALERTS_POSTED.labels("sent").inc()
                    return
                problem = f"HTTP {response.status_code}"
                if response.is_client_error and response.status_code != 429:
                    break
            log.warning("alert for run %s, try %d: %s", alert["run_id"], try_, problem, extra={"action": "alert"})
        ALERTS_POSTED.labels("failed").inc()
        log.error("gave up the alert for run %s", alert["run_id"], extra={"action": "alert"})

    async def close(self, wait_s: float = 5.0) -> None:
        """Waits up to `wait_s` for the alerts still being sent, then stops."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=wait_s)
            for task in self._sending:
                task.cancel()
            await asyncio.gather(*self._sending, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
