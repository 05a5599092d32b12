"""Every expected run accounted for, under a controlled clock (the scheduler's `now` and the claim's `at`), not by
sleeping: an outage of three hours across midnight for each misfire policy, a scheduler down for a whole day, a
paused one-off, backfills."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler.materialize import materialize
from taskmill.models import Schedule
from taskmill.planning.plan import History, Options, make_plan
from taskmill.settings import Settings
from taskmill.spread import placed
from taskmill.states import ScheduleKind
from taskmill.store.runs import claim_due
from tests.api.conftest import api_settings, client  # noqa: F401 (fixtures)
from tests.helpers import new_task
from tests.workflows.conftest import WRITE

# A day well ahead of the real one: the clock the scheduler and the claim are given, nothing else's.
DAY = (datetime.now(UTC) + timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)
QUARTER = timedelta(minutes=15)


async def _run_the_pipeline_until(pool: asyncpg.Pool, db: asyncpg.Connection, at: datetime) -> list[int]:
    """What the distributor does at `at`: claims until nothing is left; the claimed runs then succeed (as their
    processors would record). Returns the ids it claimed."""
    claimed: list[int] = []
    while batch := await claim_due(pool, 1000, 300, 0, at):
        claimed += [o.run_id for o in batch]
    await db.execute(
        "UPDATE task_schedule SET status = 'running', started_at = $2 WHERE id = ANY($1::bigint[])", claimed, at
    )
    await db.execute(
        "UPDATE task_schedule SET status = 'succeeded', finished_at = $2 WHERE id = ANY($1::bigint[])", claimed, at
    )
    return claimed


async def _occurrences(db: asyncpg.Connection, task_id: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT scheduled_time, status::text, error FROM task_schedule WHERE task_id = $1 AND scheduled_time >= $2 "
        "AND scheduled_time <= $3 ORDER BY scheduled_time",
        task_id,
        start,
        end,
    )
    return [dict(r) for r in rows]


def _times(start: datetime, end: datetime, step: timedelta = QUARTER) -> list[datetime]:
    out = []
    while start <= end:
        out.append(start)
        start += step
    return out


@pytest.mark.parametrize(
    ("policy", "window", "ran"),
    [
        # 21:15 to 00:45 were missed (the outage), 01:00 is on time.
        ("skip", 86_400, ["01:00"]),
        ("once", 86_400, ["00:45", "01:00"]),
        ("all", 86_400, [*[f"{h:02d}:{m:02d}" for h in (21, 22, 23, 0) for m in (0, 15, 30, 45)][1:], "01:00"]),
        ("all", 3_600, ["00:00", "00:15", "00:30", "00:45", "01:00"]),
    ],
)
async def test_an_outage_of_three_hours_across_midnight_ends_every_occurrence_as_the_policy_says(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool, policy: str, window: int, ran: list[str]
) -> None:
    settings = settings.model_copy(update={"lookahead_hours": 0})
    task = await new_task(
        db, "quarterly", schedule=Schedule(kind=ScheduleKind.CRON, cron="*/15 * * * *"), misfire=policy,
        catchup_window_seconds=window,
    )  # fmt: skip
    await db.execute("UPDATE tasks SET schedule_from = $1", DAY + timedelta(hours=20))
    before, after = DAY + timedelta(hours=21), DAY + timedelta(days=1, hours=1)
    await materialize(pool, settings, before)
    await _run_the_pipeline_until(pool, db, before)  # 20:00 to 21:00 ran on time
    # The outage: nothing runs from 21:00 to 01:00; then the scheduler and the distributor are back.
    await materialize(pool, settings, after)
    claimed = await _run_the_pipeline_until(pool, db, after)
    seen = await _occurrences(db, task.id, DAY + timedelta(hours=20), after)
    # Every expected occurrence is a row, and every one ended in a recorded state.
    assert [r["scheduled_time"] for r in seen] == _times(DAY + timedelta(hours=20), after)
    late = [r for r in seen if before < r["scheduled_time"] < after]
    ran_late = [
        f"{r['scheduled_time']:%H:%M}" for r in seen if r["scheduled_time"] > before and r["status"] == "succeeded"
    ]
    assert ran_late == ran
    for r in late:
        assert r["status"] in ("succeeded", "skipped"), r
        if r["status"] == "skipped":
            assert r["error"].startswith(f"missed: {int((after - r['scheduled_time']).total_seconds())} s late, past "
                                         f"its grace of 60 s (misfire {policy}")  # fmt: skip
    # The ones caught up go oldest first.
    order = await db.fetch(
        "SELECT scheduled_time FROM task_schedule WHERE id = ANY($1::bigint[]) ORDER BY queued_at, id", claimed
    )
    assert [r["scheduled_time"] for r in order] == sorted(r["scheduled_time"] for r in order)


async def test_a_scheduler_down_for_a_whole_day_leaves_no_occurrence_unrecorded(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Down from 21:00 to 01:00 two days later: the day in between is caught up from the watermark (it used to
    start from today and forget it), and with `skip` every missed occurrence is recorded skipped."""
    settings = settings.model_copy(update={"lookahead_hours": 0})
    task = await new_task(db, "hourly", schedule=Schedule(kind=ScheduleKind.CRON, cron="0 * * * *"), misfire="skip")
    await db.execute("UPDATE tasks SET schedule_from = $1", DAY + timedelta(hours=20))
    before, after = DAY + timedelta(hours=21), DAY + timedelta(days=2, hours=1)
    await materialize(pool, settings, before)
    await _run_the_pipeline_until(pool, db, before)
    await materialize(pool, settings, after)
    await _run_the_pipeline_until(pool, db, after)
    seen = await _occurrences(db, task.id, before + timedelta(hours=1), after - timedelta(hours=1))
    assert [r["scheduled_time"] for r in seen] == _times(before + timedelta(hours=1), after - timedelta(hours=1),
                                                         timedelta(hours=1))  # fmt: skip
    assert {r["status"] for r in seen} == {"skipped"} and len(seen) == 27


async def test_a_paused_one_off_keeps_its_run_and_resumed_late_follows_its_misfire_policy(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    client: httpx.AsyncClient,  # noqa: F811
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=5)
    tasks = {}
    for name, policy in (("runs-late", "once"), ("skips-late", "skip")):
        body = {"name": name, "type": "noop", "schedule": {"kind": "once", "at": soon.isoformat()}, "misfire": policy}
        created = await client.post("/tasks", json=body, headers=WRITE)
        assert created.status_code == 201, created.text
        tasks[name] = created.json()["id"]
        assert created.json()["completed"] is False
        paused = await client.put(f"/tasks/{tasks[name]}/inactive", headers=WRITE)
        assert paused.status_code == 200
    later = soon + timedelta(minutes=10)
    assert await claim_due(pool, 100, 300, 0, later) == []  # held while paused: nothing is claimed, nothing missed
    for task_id in tasks.values():
        assert (await client.put(f"/tasks/{task_id}/active", headers=WRITE)).status_code == 200
    claimed = await claim_due(pool, 100, 300, 0, later)
    runs = {r["task_id"]: r for r in await db.fetch("SELECT task_id, id, status::text, error FROM task_schedule")}
    assert [o.run_id for o in claimed] == [runs[tasks["runs-late"]]["id"]]
    assert runs[tasks["skips-late"]]["status"] == "skipped"
    assert runs[tasks["skips-late"]]["error"].startswith("missed: 600 s late, past its grace of 60 s (misfire skip")
    done = (await client.get("/tasks?completed=true", headers=WRITE)).json()["items"]
    assert [t["name"] for t in done] == ["skips-late"]
    open_ = (await client.get("/tasks?completed=false", headers=WRITE)).json()["items"]
    assert [t["name"] for t in open_] == ["runs-late"]


@pytest.mark.parametrize("made_paused", [False, True])
async def test_a_paused_one_off_keeps_its_one_run_through_edits_and_runs_it_once_resumed(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    client: httpx.AsyncClient,  # noqa: F811
    made_paused: bool,
) -> None:
    """As the dashboard's form edits it: the whole definition, `active: false` included, a new payload and time."""
    hour = datetime.now(UTC) + timedelta(hours=1)
    body: dict[str, Any] = {"name": "later", "type": "noop", "schedule": {"kind": "once", "at": hour.isoformat()}}
    created = await client.post("/tasks", json=body | {"active": not made_paused}, headers=WRITE)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    if not made_paused:
        assert (await client.put(f"/tasks/{task_id}/inactive", headers=WRITE)).status_code == 200
    moved = hour + timedelta(minutes=30)
    edit = body | {"active": False, "payload": {"edited": True}, "schedule": {"kind": "once", "at": moved.isoformat()}}
    for _ in range(2):  # edited twice while paused
        edited = await client.put(f"/tasks/{task_id}", json=edit, headers=WRITE)
        assert edited.status_code == 200, edited.text
    runs = await db.fetch(
        "SELECT scheduled_time, status::text, lease_until = 'infinity' AS held FROM task_schedule WHERE task_id = $1",
        task_id,
    )
    assert [tuple(r) for r in runs] == [(moved, "scheduled", True)]
    assert await claim_due(pool, 100, 300, 0, moved + timedelta(seconds=1)) == []  # held while paused
    assert (await client.put(f"/tasks/{task_id}/active", headers=WRITE)).status_code == 200
    (claimed,) = await claim_due(pool, 100, 300, 0, moved + timedelta(seconds=1))
    assert b'"edited": true' in claimed.body
    assert await db.fetchval("SELECT count(*) FROM task_schedule WHERE task_id = $1", task_id) == 1


async def test_a_backfill_makes_a_past_range_once_and_its_runs_are_never_missed(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    client: httpx.AsyncClient,  # noqa: F811
) -> None:
    body = {"name": "hourly", "type": "noop", "schedule": {"kind": "cron", "cron": "0 * * * *"}, "misfire": "skip"}
    task = (await client.post("/tasks", json=body, headers=WRITE)).json()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    span = {"from": (hour - timedelta(hours=10)).isoformat(), "to": (hour - timedelta(hours=5)).isoformat()}
    first = await client.post(f"/tasks/{task['id']}/backfill", json=span, headers=WRITE)
    assert first.status_code == 201, first.text
    assert first.json() == {"created": 5, "existing": 0}
    again = await client.post(f"/tasks/{task['id']}/backfill", json=span, headers=WRITE)
    assert again.json() == {"created": 0, "existing": 5}
    claimed = await claim_due(pool, 100, 300, 0)
    backfilled = await db.fetch("SELECT id FROM task_schedule WHERE backfill ORDER BY scheduled_time")
    assert len(backfilled) == 5
    assert {r["id"] for r in backfilled} <= {o.run_id for o in claimed}  # hours late, and still run: not missed
    too_long = {"from": "2020-01-01T00:00:00Z", "to": span["to"]}
    refused = await client.post(f"/tasks/{task['id']}/backfill", json=too_long, headers=WRITE)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {"field": "to", "reason": "the range holds more than 10000 occurrences: backfill it in parts"}
    ]
    future = {"from": span["from"], "to": (hour + timedelta(hours=5)).isoformat()}
    refused = await client.post(f"/tasks/{task['id']}/backfill", json=future, headers=WRITE)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "to"


async def test_a_thousand_tasks_at_the_hour_spread_over_their_window_each_placed_once_and_alike_on_every_replica(
    settings: Settings,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    client: httpx.AsyncClient,  # noqa: F811
) -> None:
    tasks = [{"name": f"t{i}", "type": "noop", "schedule": {"kind": "cron", "cron": "0 * * * *"},
              "window_seconds": 600} for i in range(1000)]  # fmt: skip
    created = await client.post("/tasks/bulk", json=tasks, headers=WRITE)
    assert created.status_code == 201, created.text
    refused = await client.post(
        "/tasks", json={**tasks[0], "name": "bad", "schedule": {"kind": "interval", "every_seconds": 60}},
        headers=WRITE,
    )  # fmt: skip
    assert refused.status_code == 422 and "window_seconds: at most the interval (60 s)" in refused.text
    # A cron's window as well: wider than the gap between two of its firings, occurrences could be placed at one
    # instant, and the second would be lost.
    for cron, gap in (("*/5 * * * *", 300), ("0 9,10 * * *", 3600), ("*/2 * * * * *", 2)):
        wide = {**tasks[0], "name": "wide", "schedule": {"kind": "cron", "cron": cron}, "window_seconds": gap + 1}
        refused = await client.post("/tasks", json=wide, headers=WRITE)
        assert refused.status_code == 422, refused.text
        assert f"window_seconds: at most the shortest gap between the schedule's occurrences ({gap} s)" in refused.text
        assert (await client.post("/tasks", json={**wide, "window_seconds": gap}, headers=WRITE)).status_code == 201
        await db.execute("DELETE FROM tasks WHERE name = 'wide'")
    await db.execute("UPDATE tasks SET schedule_from = $1", DAY)
    now = DAY + timedelta(hours=10, minutes=30)
    await asyncio.gather(*(materialize(pool, settings, now) for _ in range(3)))  # three replicas at once
    rows = await db.fetch("SELECT task_id, scheduled_time FROM task_schedule WHERE scheduled_time >= $1", DAY)
    by_task: dict[int, list[datetime]] = {}
    for r in rows:
        by_task.setdefault(r["task_id"], []).append(r["scheduled_time"])
    hours = [DAY + timedelta(hours=h) for h in range(24)]
    assert len(by_task) == 1000
    for task_id, times in by_task.items():  # each occurrence once, at the same place whoever placed it
        assert sorted(times) == [placed(task_id, h, 600) for h in hours]
    per_minute = Counter((t - t.replace(minute=0, second=0)).seconds // 60 for times in by_task.values() for t in times)
    assert sorted(per_minute) == list(range(10))  # all within [t, t + 600 s)
    assert max(per_minute.values()) / 24 < 150  # ~100 a minute, not 1,000 at :00
    # The forecast projects the occurrences not yet rows at their placed times too (here: all of them, from now).
    await db.execute("UPDATE tasks SET materialized_until = NULL, schedule_from = now()")
    plan = await make_plan(pool, History(), Options(horizon_s=3 * 3600, bucket_s=60))
    assert 2000 <= plan.forecast.runs.sum() <= 3000 and plan.forecast.runs.max() < 150
    summary = (await client.get("/scheduled-tasks-summary?hours=3&bucket=60", headers=WRITE)).json()
    assert summary["peak_runs"] < 150
    assert summary["peak_runs_before_spreading"] == 1000  # all at :00
