"""The operator's dashboard (issue 16) in a real headless Chromium against the real API, database and broker: the task
grid's next and last runs, Run now, Cancel and Retry, the queue-pressure panel, and the last three hours on the
capacity graph (the forecast made before each bucket beside the compute it used, with the error in numbers). Every
figure asserted is one the data set up here makes."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from taskmill.models import Schedule, Task
from taskmill.settings import Settings
from taskmill.store.processors import register
from tests.api.conftest import SECRET, bearer, served_api
from tests.e2e.tokens import paste
from tests.helpers import new_task
from tests.transports import publish

pytestmark = pytest.mark.slow

YEARLY = Schedule(kind="cron", cron="0 0 1 1 *")  # nothing of theirs falls due while the test runs
MINUS = "\u2212"  # the dashboard writes a negative error with a minus sign


async def sleeper(db: asyncpg.Connection, name: str) -> Task:
    """A task of a type with no history: the forecast weighs its runs by its estimate, 4,000 ms (the past hours'
    attempts set up here are noop's)."""
    return await new_task(db, name, "sleep", {"ms": 1}, YEARLY, estimated_ms=4000)


async def dead_run(db: asyncpg.Connection, task_id: int, ago: timedelta) -> int:
    """A run that was due `ago`, ran once and died (HTTP 503)."""
    run_id: int = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() - $2::interval) RETURNING id",
        task_id,
        ago,
    )
    await db.execute(
        "UPDATE task_schedule SET status = 'running', attempt = 1, started_at = now() WHERE id = $1", run_id
    )
    await db.execute(
        "UPDATE task_schedule SET status = 'dead', finished_at = now(), error = 'HTTP 503' WHERE id = $1", run_id
    )
    # Its attempt kept without a duration: neither the compute used in the past hours nor the type's mean counts it.
    await db.execute(
        "INSERT INTO task_results (run_id, attempt, status, finished_at, duration_ms, error, scheduled_time) "
        "SELECT id, 1, 'dead', scheduled_time + interval '1 second', NULL, 'HTTP 503', scheduled_time "
        "FROM task_schedule WHERE id = $1",
        run_id,
    )
    return run_id


async def past_hours(db: asyncpg.Connection, task_id: int) -> None:
    """Three minutes 20 minutes ago: the capacity role forecast 6,000 ms for the first and 3,000 ms for the second,
    nothing for the third; their attempts used 2,000 + 2,500 ms, 4,000 ms and 1,000 ms."""
    base: datetime = await db.fetchval("SELECT date_trunc('minute', now()) - interval '20 minutes'")
    await db.executemany(
        "INSERT INTO capacity_forecasts VALUES ($1, 60, 1, $2, $1::timestamptz - interval '1 minute')",
        [(base, 6000.0), (base + timedelta(minutes=1), 3000.0)],
    )
    for i, (minute, ms) in enumerate(((0, 2000.0), (0, 2500.0), (1, 4000.0), (2, 1000.0))):
        start = base + timedelta(minutes=minute)
        await db.execute(
            """WITH r AS (
                   INSERT INTO task_schedule (task_id, scheduled_time, status)
                   VALUES ($1, $2::timestamptz - interval '1 hour' + make_interval(secs => $4), 'succeeded')
                   RETURNING id, scheduled_time)
               INSERT INTO task_results (run_id, attempt, status, finished_at, duration_ms, scheduled_time)
               SELECT id, 1, 'succeeded', $2::timestamptz + interval '20 seconds', $3, scheduled_time FROM r""",
            task_id,
            start,
            ms,
            i,
        )


async def test_the_operator_runs_cancels_and_retries_and_reads_the_pressure_and_the_past_hours(
    browser: Browser, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    report = await sleeper(db, "report")
    dead = await dead_run(db, report.id, timedelta(minutes=30))
    upcoming: datetime = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() + interval '40 minutes') "
        "RETURNING scheduled_time",
        report.id,
    )
    await new_task(db, "backup", schedule=YEARLY)
    # A run that failed as a workflow's step (its workflow run counted it): the API refuses to retry it alone.
    step: int = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time, workflow_run_id) "
        "VALUES ($1, now() - interval '10 minutes', 77) RETURNING id",
        (await new_task(db, "etl-load", schedule=YEARLY)).id,
    )
    await db.execute("UPDATE task_schedule SET status = 'running', attempt = 1 WHERE id = $1", step)
    await db.execute("UPDATE task_schedule SET status = 'failed', finished_at = now() WHERE id = $1", step)
    late = await sleeper(db, "late")
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, now() - interval '2 minutes' - make_interval(secs => s) FROM generate_series(0, 1) s",
        late.id,
    )
    await past_hours(db, (await new_task(db, "history", schedule=YEARLY)).id)
    await register(db, "p1", "none")
    await db.execute("UPDATE processors SET seen_at = now() + interval '1 hour'")  # alive for the whole test
    await publish(settings, b'{"v": 1}', "noop")  # one message waiting in the work queue

    page = await browser.new_page(viewport={"width": 1366, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        async with (
            served_api(settings.model_copy(update={"jwt_secret": SECRET})) as (base, _),
            httpx.AsyncClient(base_url=base, headers=bearer()) as api,
        ):
            await operate(page, base, api, db, dead, step, upcoming)
    except BaseException:
        await page.screenshot(path=tmp_path / "operator.png", full_page=True)
        print(f"screenshot: {tmp_path / 'operator.png'}; page errors: {errors}")
        raise
    assert errors == []


def token(scope: str) -> str:
    return bearer(scope)["Authorization"].removeprefix("Bearer ")


# Where the chart's past series lie against the line at now, read in one go (a poll may redraw between two reads).
PAST_XS = """() => {
    const svg = document.querySelector("#capacity-chart");
    const xs = (el) => (el.getAttribute("points") || el.getAttribute("d")).match(/-?\\d+(\\.\\d+)?,/g)
        .map((p) => parseFloat(p));
    return {
        now: parseFloat(svg.querySelector("line.now").getAttribute("x1")),
        used: xs(svg.querySelector("[data-series=used]")),
        forecast: xs(svg.querySelector("[data-series=forecast]")),
        compute: xs(svg.querySelector("[data-series=compute]")),
        note: svg.querySelector("[data-note=past-error]").textContent,
    };
}"""


async def operate(
    page: Page, base: str, api: httpx.AsyncClient, db: asyncpg.Connection, dead: int, step: int, upcoming: datetime
) -> None:
    grid = page.locator("#task-grid")
    runs = page.locator("#run-grid")

    # --- A token that may only read sees every figure and no button that changes anything.
    await page.goto(f"{base}/?poll=1")
    await paste(page, token("tasks:read"))
    report = grid.locator("tbody tr", has=page.get_by_role("rowheader", name="report", exact=True))
    await expect(report.locator("td.last .badge")).to_have_text("dead")
    await expect(runs.get_by_role("button", name=f"Logs of run {dead}")).to_be_visible()
    await expect(page.locator("#pressure-backlog")).to_have_text("2 runs due")
    for name in ("Run report now", f"Retry run {dead}"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await expect(runs.get_by_role("button", name=re.compile("^Cancel run "))).to_have_count(0)

    # --- With tasks:write: the grid's next and last runs.
    await paste(page, token("tasks:read tasks:write"))
    await expect(report.get_by_role("button", name="Run report now")).to_be_visible()
    shown = await report.locator("td.next time").get_attribute("datetime")
    assert shown is not None and datetime.fromisoformat(shown) == upcoming
    await expect(report.locator("td.last .badge")).to_have_text("dead")
    backup = grid.locator("tbody tr", has=page.get_by_role("rowheader", name="backup", exact=True))
    await expect(backup.locator("td.next")).to_have_text("—")
    await expect(backup.locator("td.last")).to_have_text("—")

    # --- The pressure: two runs due two minutes ago, one message in the work queue, one processor alive of the one
    # the bucket under way needs (2 x 4,000 ms over 9,000 ms a processor).
    await expect(page.locator("#pressure-backlog")).to_have_text("2 runs due")
    await expect(page.locator("#pressure-oldest")).to_have_text(re.compile(r"^waiting [23] min \d+ s$"))
    processors = page.locator("#pressure-processors")
    await expect(processors).to_have_text("1 live / 1 required now (8000 ms of compute in this 60 s)")
    await expect(processors).not_to_have_class(re.compile(r"\bbad\b"))
    await expect(page.locator("#pressure-queues li")).to_have_text(
        ["work: 1 ready", "work.urgent: 0 ready", "dead: 0 held"]
    )
    await expect(page.locator("#pressure-updated")).to_contain_text("RabbitMQ transport")

    # --- The last three hours: 9,000 ms forecast for the two buckets with a forecast, 8,500 ms used in them.
    await expect(page.locator("#capacity-past")).to_have_text(
        "Last 3 hours over the 2 buckets with a forecast: forecast 9000 ms, used 8500 ms · error +500 ms (+5.9 %)"
        " · mean absolute error 1250 ms per bucket"
    )
    drawn = await page.evaluate(PAST_XS)
    assert drawn["note"] == "Forecast error +500 ms (+5.9 %)"
    assert len(drawn["used"]) == 180 and max(drawn["used"]) < drawn["now"], drawn["now"]
    assert len(drawn["forecast"]) == 2 and max(drawn["forecast"]) < drawn["now"]  # a point per bucket forecast
    assert min(drawn["compute"]) <= drawn["now"] < max(drawn["compute"])  # the bucket under way holds now
    await page.get_by_text("Forecast as a table").click()
    past_rows = page.locator("#capacity-past-grid tbody tr")
    await expect(past_rows).to_have_count(3)
    await expect(past_rows.nth(0).locator("td.num")).to_have_text(["6000 ms", "4500 ms", "2", "+1500 ms", "+33.3 %"])
    await expect(past_rows.nth(1).locator("td.num")).to_have_text(
        ["3000 ms", "4000 ms", "1", f"{MINUS}1000 ms", f"{MINUS}25.0 %"]
    )
    await expect(past_rows.nth(2).locator("td.num")).to_have_text(["—", "1000 ms", "1", "—", "n/a"])

    # --- Run now: a run due now, in the runs, the grid and the pressure (one processor short now).
    await report.get_by_role("button", name="Run report now").click()
    await expect(page.locator("#toast")).to_have_text(re.compile(r"^Run #\d+ of report is due now\.$"))
    toast = await page.locator("#toast").text_content()
    assert toast is not None
    ran = int(re.findall(r"\d+", toast)[0])
    row = runs.locator(f'tbody tr[data-run-id="{ran}"]')
    await expect(row.locator("td.status")).to_have_text("scheduled")
    await expect(report.locator("td.last .badge")).to_have_text("scheduled")
    await expect(page.locator("#pressure-backlog")).to_have_text("3 runs due")
    await expect(processors).to_have_text("1 live / 2 required now (12.0 s of compute in this 60 s)")
    await expect(processors).to_have_class(re.compile(r"\bbad\b"))

    # --- Cancel it: cancelled everywhere, the backlog back to two.
    await row.get_by_role("button", name=f"Cancel run {ran}").click()
    await expect(row.locator("td.status")).to_have_text("cancelled")
    await expect(row.get_by_role("button")).to_have_count(1)  # its logs only
    await expect(report.locator("td.last .badge")).to_have_text("cancelled")
    await expect(page.locator("#pressure-backlog")).to_have_text("2 runs due")
    assert await db.fetchval("SELECT status::text FROM task_schedule WHERE id = $1", ran) == "cancelled"

    # --- Retry the dead run: the same run, due again as its second attempt, its first kept.
    dead_row = runs.locator(f'tbody tr[data-run-id="{dead}"]')
    await expect(dead_row.locator("td.status")).to_have_text("dead")
    await dead_row.get_by_role("button", name=f"Retry run {dead}").click()
    await expect(page.locator("#toast")).to_have_text(f"Run #{dead} of report goes again as attempt 2.")
    await expect(dead_row.locator("td.status")).to_have_text("scheduled")
    await expect(dead_row.get_by_role("button", name=f"Cancel run {dead}")).to_be_visible()
    await expect(page.locator("#pressure-backlog")).to_have_text("3 runs due")
    await expect(page.locator("#pressure-oldest")).to_have_text(re.compile(r"^waiting 3[01] min \d+ s$"))
    stored = await db.fetchrow(
        "SELECT status::text AS status, attempt, backfill FROM task_schedule WHERE id = $1", dead
    )
    assert stored is not None and dict(stored) == {"status": "scheduled", "attempt": 1, "backfill": True}
    await dead_row.get_by_role("button", name=f"Logs of run {dead}").click()
    logs = page.get_by_role("dialog", name=re.compile(f"Run #{dead}"))
    await expect(logs.locator(".attempt h3")).to_have_text(["Attempt 1 dead"])
    await expect(logs.locator("table tbody tr").last.locator(".badge")).to_have_text(["dead", "scheduled"])
    await logs.get_by_role("button", name="Close").click()
    detail = (await api.get(f"/runs/{dead}")).json()
    assert [(t["from_status"], t["to_status"]) for t in detail["transitions"]][-1] == ("dead", "scheduled")

    # --- A retry the API refuses (a workflow's step, whose workflow run counted its failure): its reason, said.
    step_row = runs.locator(f'tbody tr[data-run-id="{step}"]')
    await step_row.get_by_role("button", name=f"Retry run {step}").click()
    await expect(page.locator("#toast")).to_have_text(
        f"Run #{step} was not retried: run {step} is a step of workflow run 77, which counted its outcome already: "
        "run the workflow again"
    )
    await expect(step_row.locator("td.status")).to_have_text("failed")
    assert (await api.post(f"/runs/{dead}/retry")).status_code == 409  # and the dead run, retried, is scheduled
