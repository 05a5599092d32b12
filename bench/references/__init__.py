"""Reference systems for `python -m bench`: taskmill's workloads through Celery and through pgqueuer.

The same no-op for each: a job's execution inserts one durable row `(job_id, executed_at)` into a ledger table in
PostgreSQL (autocommit, `clock_timestamp()` at the start of the job), the counterpart of the outcome taskmill
records for every run. The ledger is what is counted: lost = jobs - distinct job ids, duplicates = rows - distinct
job ids. Each reference has a database of its own (`<bench database>_celery`, `<bench database>_pgqueuer`) and,
for Celery, broker names of its own on the same RabbitMQ; it starts its own worker processes, and removes all of it
when the workload ends. Its settings are in its result line, under `settings`.

`run` is what bench/__main__.py calls. Celery and pgqueuer are the `bench` extra (`pip install -e '.[bench]'`);
they are imported only when a reference workload runs, so taskmill's own workloads need neither.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

WORKLOADS = ("celery-burst", "celery-at", "pgqueuer-burst", "pgqueuer-at")
"""Part of the default set."""
EXTRA_WORKLOADS = ("celery-cron",)
"""Only when named: celery-cron takes four minutes and more."""

INSTALL_HINT = "pip install -e '.[bench]'"


async def run(workload: str, dsn: str, amqp: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs one reference workload (`<system>-<workload>`) and returns its result line."""
    system, _, kind = workload.partition("-")
    try:
        if system == "celery":
            import bench.references.celery_ref as celery_ref
        else:
            import bench.references.pgqueuer_ref as pgqueuer_ref
    except ModuleNotFoundError as exc:
        raise SystemExit(f"{workload}: {exc.name} is not installed; install the bench extra: {INSTALL_HINT}") from exc
    if workload == "celery-burst":
        return await celery_ref.burst(dsn, amqp, args.runs, pool=args.celery_pool, acks_late=args.celery_acks_late)
    if workload == "celery-at":
        return await celery_ref.at(
            dsn, amqp, args.at_runs, args.at_ahead, pool=args.celery_pool, acks_late=args.celery_acks_late
        )
    if workload == "celery-cron":
        return await celery_ref.cron(
            dsn, amqp, args.cron_entries, args.cron_minutes, pool=args.celery_pool, acks_late=args.celery_acks_late
        )
    if workload == "pgqueuer-burst":
        return await pgqueuer_ref.burst(dsn, args.runs, batch_size=args.pgqueuer_batch_size)
    if workload == "pgqueuer-at":
        return await pgqueuer_ref.at(dsn, args.at_runs, args.at_ahead, batch_size=args.pgqueuer_batch_size)
    raise ValueError(f"unknown reference workload {workload} ({system} {kind})")


def ratios(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """taskmill's burst runs/s over each reference's, per transport (`taskmill` over RabbitMQ, `taskmill-postgres`),
    and every system's `at` p99, when a taskmill burst and a reference's ran."""
    rates = {r.get("system", "taskmill"): r["runs_per_s"] for r in results if r.get("workload") == "burst"}
    ours = {system: rates.pop(system) for system in ("taskmill", "taskmill-postgres") if system in rates}
    if not ours or not rates:
        return None
    line: dict[str, Any] = {"workload": "ratios", "burst_runs_per_s": ours | rates}
    for system, rate in ours.items():
        line[f"{system}_burst_over"] = {
            other: round(rate / theirs, 2) if theirs else None for other, theirs in rates.items()
        }
    if at := {r.get("system", "taskmill"): r["lateness_ms"]["p99"] for r in results if r.get("workload") == "at"}:
        line["at_p99_ms"] = at
    return line
