"""Capacity planning over HTTP (seed 004): elapsed time per task type, and the compute and processors the next
hours need."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from api.auth import READ, Principal, require
from api.deps import pool
from api.errors import invalid
from capacity.plan import History, Options, make_plan
from taskmill.settings import Settings
from taskmill.store.capacity import TypeSummary, type_summaries

router = APIRouter()

Reader = Annotated[Principal, Depends(require(READ))]
MAX_BUCKETS = 10_000


class TaskSummary(BaseModel):
    since: datetime
    types: list[TypeSummary]


class Bucket(BaseModel):
    start: datetime
    runs: int
    projected_runs: int  # of `runs`, those not yet materialized (projected from their cron or interval)
    required_ms: float
    required_instances: int


class ScheduledSummary(BaseModel):
    generated_at: datetime
    horizon_hours: float
    bucket_seconds: int
    capacity_ms_per_instance: float
    buffer: float
    total_runs: int
    peak_instances: int
    buckets: list[Bucket]


def _history(request: Request) -> History:
    history: History = request.app.state.history
    return history


@router.get("/task-summary", response_model=TaskSummary)
async def task_summary(request: Request, _: Reader) -> TaskSummary:
    """Attempts finished in the past year per task type: how many, how many failed, mean, median and p95 ms."""
    db = pool(request)
    summaries = await type_summaries(db)
    _history(request).remember(summaries)  # the forecast weighs runs by these means: fresh ones, free
    since: datetime = await db.fetchval("SELECT now() - interval '1 year'")
    return TaskSummary(since=since, types=summaries)


@router.get("/scheduled-tasks-summary", response_model=ScheduledSummary)
async def scheduled_tasks_summary(
    request: Request,
    _: Reader,
    hours: Annotated[float, Query(gt=0, le=48, description="how far ahead")] = 3.0,
    bucket: Annotated[int, Query(ge=1, le=3600, description="bucket width in seconds")] = 60,
    # At least 1 ms and at most 99 % headroom: an instance always has capacity, so the count stays finite.
    capacity_ms: Annotated[float | None, Query(ge=1, le=1e12, description="compute an instance gives a bucket")] = None,
    buffer: Annotated[float | None, Query(ge=0, le=0.99, description="headroom kept free on every instance")] = None,
) -> ScheduledSummary:
    """Per bucket from now to the horizon: runs (materialized, plus recurring runs projected past the scheduler's
    watermark), compute (each run weighted by its type's mean over the past year, or its task's estimate), and
    `required_instances = ceil(required_ms / (capacity_ms * (1 - buffer)))`."""
    settings: Settings = request.app.state.settings
    if hours * 3600 / bucket > MAX_BUCKETS:
        reason = f"gives more than {MAX_BUCKETS:,} buckets in {hours:g} hours: widen it"
        raise invalid(("query", "bucket"), reason)
    options = Options(
        horizon_s=hours * 3600,
        bucket_s=bucket,
        capacity_ms=capacity_ms if capacity_ms is not None else settings.capacity_ms_per_instance,
        buffer=buffer if buffer is not None else settings.capacity_buffer,
    )
    plan = await make_plan(pool(request), _history(request), options)
    f = plan.forecast
    buckets = [
        Bucket(
            start=start,
            runs=int(f.runs[i]),
            projected_runs=int(f.projected_runs[i]),
            required_ms=float(f.required_ms[i]),
            required_instances=int(f.instances[i]),
        )
        for i, start in enumerate(plan.bucket_starts())
    ]
    return ScheduledSummary(
        generated_at=plan.generated_at,
        horizon_hours=hours,
        bucket_seconds=bucket,
        capacity_ms_per_instance=options.capacity_ms,
        buffer=options.buffer,
        total_runs=int(f.runs.sum()),
        peak_instances=plan.peak(),
        buckets=buckets,
    )
