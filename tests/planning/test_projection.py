"""Recurring runs not materialized yet are projected from their schedules: across midnight, past each task's
watermark only, and the same as the scheduler would materialize them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from taskmill.models import Task
from taskmill.planning.plan import Options, compute
from taskmill.planning.projection import project
from taskmill.schedules import run_times
from taskmill.states import ScheduleKind
from taskmill.store.capacity import LaggingTask, Upcoming

NOW = datetime(2026, 3, 10, 22, 10, 20, tzinfo=UTC)


def lagging(
    task_id: int,
    *,
    cron: str | None = None,
    every: int | None = None,
    tz: str = "UTC",
    since: datetime = NOW - timedelta(days=30),
    watermark: datetime | None = NOW,  # the scheduler has materialized everything before now
    ms: float = 1000.0,
) -> LaggingTask:
    kind = "cron" if cron else "interval"
    return LaggingTask(task_id, kind, cron, every, tz, since, watermark, ms)


def times(offsets: np.ndarray, origin: datetime) -> list[str]:
    return [(origin + timedelta(seconds=float(s))).strftime("%d %H:%M:%S") for s in sorted(offsets)]


def test_cron_runs_are_projected_across_midnight() -> None:
    tasks = [lagging(1, cron="*/30 * * * *"), lagging(2, cron="30 23 * * *"), lagging(3, cron="0 0 * * *")]
    end = NOW + timedelta(hours=3)
    runs = project(tasks, NOW, NOW, end)
    assert times(runs.offsets_s, NOW) == [
        "10 22:30:00",
        "10 23:00:00",
        "10 23:30:00",
        "10 23:30:00",
        "11 00:00:00",
        "11 00:00:00",
        "11 00:30:00",
        "11 01:00:00",
    ]
    assert runs.count.sum() == 8 and runs.ms.sum() == 8000


def test_cron_is_read_in_the_tasks_timezone() -> None:
    # 01:00 in Paris is 00:00 UTC in March before the change to summer time.
    runs = project([lagging(1, cron="0 1 * * *", tz="Europe/Paris")], NOW, NOW, NOW + timedelta(hours=3))
    assert times(runs.offsets_s, NOW) == ["11 00:00:00"]


def test_only_runs_past_each_tasks_watermark_are_projected() -> None:
    # Three tasks share one expression; their runs before their watermarks are rows already.
    tasks = [
        lagging(1, cron="0 * * * *", ms=100),
        lagging(2, cron="0 * * * *", watermark=datetime(2026, 3, 10, 23, 30, tzinfo=UTC), ms=200),
        lagging(3, cron="0 * * * *", watermark=datetime(2026, 3, 11, 1, 0, tzinfo=UTC), ms=400),
    ]
    runs = project(tasks, NOW, NOW, NOW + timedelta(hours=3))
    by_time = dict(
        zip(times(runs.offsets_s, NOW), zip(runs.count.tolist(), runs.ms.tolist(), strict=True), strict=True)
    )
    assert by_time == {
        "10 23:00:00": (1.0, 100.0),
        "11 00:00:00": (2.0, 300.0),
        "11 01:00:00": (3.0, 700.0),  # the watermark is exclusive: the 01:00 run is not a row yet
    }


def test_a_task_that_starts_inside_the_window_is_projected_from_its_start() -> None:
    later = NOW + timedelta(minutes=50)  # edited or re-activated: schedule_from moved ahead
    runs = project([lagging(1, cron="0 * * * *", since=later, watermark=None)], NOW, NOW, NOW + timedelta(hours=3))
    assert times(runs.offsets_s, NOW) == ["11 00:00:00", "11 01:00:00"]


def test_runs_of_today_the_scheduler_has_not_inserted_yet_count_now_but_not_yesterdays() -> None:
    # Nothing materialized (the scheduler is down): the scheduler will insert today's runs from midnight on, and
    # those already past run as soon as they are in, so they are demand now.
    task = lagging(1, cron="0 */6 * * *", watermark=None)  # 00:00, 06:00, 12:00, 18:00, then 00:00 tomorrow
    runs = project([task], NOW, NOW, NOW + timedelta(hours=3))
    assert times(runs.offsets_s, NOW) == ["10 22:10:20"] * 4 + ["11 00:00:00"]
    since_noon = lagging(2, cron="0 */6 * * *", since=datetime(2026, 3, 10, 11, tzinfo=UTC), watermark=None)
    runs = project([since_noon], NOW, NOW, NOW + timedelta(hours=3))
    assert times(runs.offsets_s, NOW) == ["10 22:10:20"] * 2 + ["11 00:00:00"]


def test_interval_runs_are_projected_from_their_anchor() -> None:
    anchor = datetime(2026, 3, 10, 22, 0, tzinfo=UTC)
    tasks = [
        lagging(1, every=600, since=anchor, watermark=datetime(2026, 3, 10, 22, 45, tzinfo=UTC)),
        lagging(2, every=3600, since=anchor),
    ]
    end = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)
    runs = project(tasks, NOW, NOW, end)
    assert times(runs.offsets_s, NOW) == [
        "10 22:50:00",
        "10 23:00:00",
        "10 23:00:00",
        "10 23:10:00",
        "10 23:20:00",
    ]


def test_projection_matches_what_the_scheduler_materializes() -> None:
    # The same schedules through the scheduler's own expansion: the forecast counts the runs it will insert.
    specs = [("*/7 * * * *", None, "UTC"), ("15 0 * * *", None, "America/New_York"), (None, 1234, "UTC")]
    anchor = NOW - timedelta(hours=5, seconds=13)
    end = NOW + timedelta(hours=3)
    expected: list[datetime] = []
    tasks = []
    for i, (cron, every, tz) in enumerate(specs, start=1):
        task = Task(
            id=i,
            name=f"t{i}",
            type="noop",
            payload={},
            schedule_kind=ScheduleKind.CRON if cron else ScheduleKind.INTERVAL,
            cron=cron,
            every_seconds=every,
            run_at=None,
            timezone=tz,
            active=True,
            max_retries=0,
            retry_delay_seconds=10,
            backoff=1,
            timeout_seconds=30,
            estimated_ms=1000,
            created_by=None,
            created_at=anchor,
            schedule_from=anchor,
            secret_names=[],
        )
        expected += run_times(task, NOW, end)
        tasks.append(lagging(i, cron=cron, every=every, tz=tz, since=anchor, watermark=NOW))
    runs = project(tasks, NOW, NOW, end)
    assert times(runs.offsets_s, NOW) == sorted(t.strftime("%d %H:%M:%S") for t in expected)


def test_the_plan_covers_whole_buckets_from_now_to_the_horizon_and_counts_a_waiting_run_in_the_first() -> None:
    seen = Upcoming(
        now=NOW,
        # a run already due (counted from now), two later, one at the horizon; tasks 1 and 2 cost 8,000 and 1 ms
        run_task_ids=np.array([1, 2, 2, 2]),
        run_times_s=np.array([NOW.timestamp() + s for s in (-5.0, 39.0, 40.0, 3 * 3600.0)]),
        cost_ids=[1, 2],
        cost_ms=[8000.0, 1.0],
        lagging=[lagging(7, cron="0 0 * * *", ms=18_000)],
    )
    plan = compute(seen, Options(horizon_s=3 * 3600, bucket_s=60))
    # now is 22:10:20: buckets from 22:10:00 to the first boundary past 01:10:20.
    assert plan.start == datetime(2026, 3, 10, 22, 10, tzinfo=UTC)
    assert len(plan.forecast.runs) == 181
    # +39 s is 22:10:59 (first bucket), +40 s is 22:11:00 (second).
    assert plan.forecast.runs[:2].tolist() == [2, 1]
    assert plan.forecast.required_ms[:2].tolist() == [8001.0, 1.0]
    assert plan.forecast.runs[-1] == 1 and plan.forecast.required_ms[-1] == 1.0
    midnight = (datetime(2026, 3, 11, tzinfo=UTC) - plan.start) // timedelta(minutes=1)
    assert plan.forecast.projected_runs[midnight] == 1
    assert plan.forecast.instances[midnight] == 2
    assert plan.forecast.runs.sum() == 5 and plan.forecast.projected_runs.sum() == 1
    assert (plan.now, plan.peak(within_s=60), plan.peak()) == (1, 1, 2)
    assert plan.bucket_starts()[-1] == datetime(2026, 3, 11, 1, 10, tzinfo=UTC)
