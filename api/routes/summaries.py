"""Capacity planning over HTTP (seed 004): elapsed time per task type, the compute and processors the next hours
need, and for the hours just past, what was forecast beside what was used."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import AppSettings, Pool, Reader, TypeHistory
from api.errors import invalid
from taskmill.planning.plan import Options, make_plan
from taskmill.store.capacity import TypeSummary, summaries_since, type_summaries
from taskmill.store.forecasts import past

router = APIRouter()

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


class PastBucket(BaseModel):
    start: datetime
    forecast_ms: float | None  # what the capacity role forecast before the bucket began; None: it made no forecast
    used_ms: float  # the elapsed time of the attempts that finished in the bucket
    attempts: int
    error_ms: float | None  # forecast_ms - used_ms: above 0 the forecast was too high
    error_percent: float | None  # error_ms over used_ms; None when nothing ran or nothing was forecast


class PastSummary(BaseModel):
    """The hours before the bucket under way, as far back as the forecast looks ahead: the capacity role's forecast
    for each bucket (the last one it made before the bucket began) beside the compute used. The totals and errors are
    over the buckets with a forecast."""

    start: datetime
    used_ms: float  # in every bucket
    forecast_buckets: int  # buckets with a forecast
    forecast_ms: float | None
    error_ms: float | None
    error_percent: float | None
    mean_absolute_error_ms: float | None  # per bucket
    buckets: list[PastBucket]


class ScheduledSummary(BaseModel):
    generated_at: datetime
    horizon_hours: float
    bucket_seconds: int
    capacity_ms_per_instance: float
    buffer: float
    total_runs: int
    peak_instances: int
    # The most runs in one bucket, and what it would be were no task spread over its window (`window_seconds`).
    peak_runs: int
    peak_runs_before_spreading: int
    buckets: list[Bucket]
    past: PastSummary


@router.get("/task-summary", response_model=TaskSummary)
async def task_summary(db: Pool, history: TypeHistory, _: Reader) -> TaskSummary:
    """Attempts finished in the past year per task type: how many, how many failed, mean, median and p95 ms."""
    summaries = await type_summaries(db)
    history.remember(summaries)  # the forecast weighs runs by these means: fresh ones, free
    return TaskSummary(since=await summaries_since(db), types=summaries)


@router.get("/scheduled-tasks-summary", response_model=ScheduledSummary)
async def scheduled_tasks_summary(
    db: Pool,
    settings: AppSettings,
    history: TypeHistory,
    _: Reader,
    hours: Annotated[float, Query(gt=0, le=48, description="how far ahead")] = 3.0,
    bucket: Annotated[int, Query(ge=1, le=3600, description="bucket width in seconds")] = 60,
    # At least 1 ms and at most 99 % headroom: an instance always has capacity, so the count stays finite.
    capacity_ms: Annotated[float | None, Query(ge=1, le=1e12, description="compute an instance gives a bucket")] = None,
    buffer: Annotated[float | None, Query(ge=0, le=0.99, description="headroom kept free on every instance")] = None,
) -> ScheduledSummary:
    """Per bucket from now to the horizon: runs (materialized, plus recurring runs projected past the scheduler's
    watermark), compute (each run weighted by its type's mean over the past year, or its task's estimate), and
    `required_instances = ceil(required_ms / (capacity_ms * (1 - buffer)))`. `past`: the same span before the bucket
    under way, in buckets of the same width, each with the capacity role's forecast for it and the compute its
    attempts used."""
    if hours * 3600 / bucket > MAX_BUCKETS:
        reason = f"gives more than {MAX_BUCKETS:,} buckets in {hours:g} hours: widen it"
        raise invalid(("query", "bucket"), reason)
    options = replace(Options.of(settings), horizon_s=hours * 3600, bucket_s=bucket)
    if capacity_ms is not None:
        options = replace(options, capacity_ms=capacity_ms)
    if buffer is not None:
        options = replace(options, buffer=buffer)
    plan = await make_plan(db, history, options)
    before = await past(db, plan.start, options.horizon_s, bucket)
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
        peak_runs=int(f.runs.max(initial=0)),
        peak_runs_before_spreading=(
            plan.unspread_peak_runs if plan.unspread_peak_runs is not None else int(f.runs.max(initial=0))
        ),
        buckets=buckets,
        past=PastSummary(
            start=before.start,
            used_ms=before.used_ms,
            forecast_buckets=len(before.with_forecast),
            forecast_ms=before.forecast_ms,
            error_ms=before.error_ms,
            error_percent=before.error_percent,
            mean_absolute_error_ms=before.mean_absolute_error_ms,
            buckets=[
                PastBucket(
                    start=b.start,
                    forecast_ms=b.forecast_ms,
                    used_ms=b.used_ms,
                    attempts=b.attempts,
                    error_ms=b.error_ms,
                    error_percent=b.error_percent,
                )
                for b in before.buckets
            ],
        ),
    )
