"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against the real API, database and
broker: paste a token, create a cron task through the form (with its misfire policy, spread window, overlap policy
and concurrency cap), see it in the grid, the forecast drawn from data, edit the task, deactivate it, read a run's
logs, find a completed one-off; run a workflow and watch its graph follow the run."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, Response, expect

import distributor.service
import processor.service
from taskmill.models import Schedule, TaskCreate
from taskmill.settings import Settings
from taskmill.store.tasks import create_tasks
from taskmill.store.tasktypes import Registered, register
from tests.api.conftest import SECRET, bearer, served_api
from tests.helpers import new_task, running

# A name that would run script if the page ever rendered data as HTML.
NAME = '<img src=x onerror="window.__pwned=1">nightly'

pytestmark = pytest.mark.slow

# What a task's definition says of its missed runs and spread window, and whether a one-off has ended.
POLICY = ("misfire", "misfire_grace_seconds", "catchup_window_seconds", "window_seconds", "completed")
# What it says of overlapping runs and of how many may be in flight at once.
LIMITS = ("overlap", "max_concurrency", "concurrency_key")


async def once_runs(db: asyncpg.Connection, prefix: str, at: datetime, count: int, estimated_ms: int) -> None:
    """`count` one-off tasks due at `at`, each estimated at `estimated_ms` (no history yet: the estimate counts)."""
    for i in range(count):
        await new_task(db, f"{prefix}-{i}", schedule=Schedule(kind="once", at=at), estimated_ms=estimated_ms)


# What the chart shows, read in one go (a poll may redraw it between two separate reads).
SNAPSHOT = """() => {
    const svg = document.querySelector("#capacity-chart");
    const points = (key) => svg.querySelector(`polyline[data-series=${key}]`).getAttribute("points");
    return {
        generated_at: svg.dataset.generatedAt,
        baseline: svg.querySelector(".axis.bottom > line").getAttribute("y1"),
        compute: points("compute"),
        instances: points("instances"),
    };
}"""


class Forecasts:
    """Every forecast the page fetched, by its generated_at: the chart names the one it drew."""

    def __init__(self, page: Page) -> None:
        self.seen: dict[str, dict[str, Any]] = {}
        page.on("response", self._record)

    async def _record(self, response: Response) -> None:
        if "/scheduled-tasks-summary" in response.url and response.ok:
            body = await response.json()
            self.seen[body["generated_at"]] = body

    async def drawn(self, page: Page) -> dict[str, Any]:
        """Checks each series has a point per bucket of the forecast drawn, at heights proportional to the bucket's
        value (the scale's top is the chart's business), and returns that forecast."""
        # A function, not a bare expression: Playwright would eval the string, which the page's CSP refuses.
        await page.wait_for_function("() => document.querySelector('#capacity-chart').dataset.generatedAt")
        shown = await page.evaluate(SNAPSHOT)
        for _ in range(50):  # the response event may trail the drawing by a moment
            if shown["generated_at"] in self.seen:
                break
            await page.wait_for_timeout(50)
        summary = self.seen[shown["generated_at"]]
        baseline = float(shown["baseline"])
        for series, key in (("compute", "required_ms"), ("instances", "required_instances")):
            points = [tuple(map(float, p.split(","))) for p in shown[series].split()]
            values = [float(b[key]) for b in summary["buckets"]]
            assert len(points) == len(values) > 0
            xs = [x for x, _ in points]
            assert xs == sorted(xs) and len(set(xs)) == len(xs)
            heights = [baseline - y for _, y in points]
            top, tallest = max(values), max(heights)
            assert top > 0 and tallest > 0, f"{series} is flat"
            for value, height in zip(values, heights, strict=True):
                assert height / tallest == pytest.approx(value / top, abs=0.01)
        return summary


async def test_the_dashboard_creates_shows_edits_and_deactivates_a_cron_task(
    browser: Browser, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    api_settings = settings.model_copy(update={"jwt_secret": SECRET})
    soon = (datetime.now(UTC) + timedelta(minutes=20)).replace(second=0, microsecond=0)
    await once_runs(db, "soon", soon, 3, 4000)  # one bucket: 12,000 ms, so ceil(12000 / 9000) = 2 instances
    yearly = Schedule(kind="cron", cron="0 0 1 1 *")  # nothing in the next three hours (bar New Year's Eve)
    await create_tasks(db, [TaskCreate(name=f"bulk-{i:02}", type="noop", schedule=yearly) for i in range(20)])
    await register(db, [INVOICE], "a-processor")  # a Python handler, as a processor registers it at start
    page = await browser.new_page(viewport={"width": 1366, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    forecasts = Forecasts(page)
    try:
        async with served_api(api_settings) as (base, _), httpx.AsyncClient(base_url=base, headers=bearer()) as api:
            await exercise(page, forecasts, base, api, db)
    except BaseException:
        await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
        print(f"screenshot: {tmp_path / 'dashboard.png'}; page errors: {errors}")
        raise
    assert errors == []
    assert await page.evaluate("window.__pwned") is None


INVOICE = Registered(
    name="billing.send_invoice",
    description="Records that the customer's invoice went out.",
    payload_schema={
        "type": "object",
        "properties": {"customer_id": {"type": "integer", "minimum": 1}, "note": {"type": "string"}},
        "required": ["customer_id"],
    },
    timeout_seconds=20.0,
    module="billing.tasks",
)


async def exercise(page: Page, forecasts: Forecasts, base: str, api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    # --- The token: asked for at once; a bad one is refused with the reason and asked for again.
    await page.goto(f"{base}/?poll=1")
    dialog = page.get_by_role("dialog", name="API token")
    await expect(dialog).to_be_visible()
    await page.get_by_label("Token", exact=True).fill("not-a-token")
    await page.get_by_role("button", name="Use this token").click()
    await expect(page.locator("#token-reason")).to_contain_text("The API refused the token: invalid token")
    await expect(dialog).to_be_visible()
    token = api.headers["Authorization"].removeprefix("Bearer ")
    await page.get_by_label("Token", exact=True).fill(token)
    await page.get_by_role("button", name="Use this token").click()
    await expect(dialog).to_be_hidden()
    assert await page.evaluate("localStorage.getItem('taskmill.token')") == token

    # --- A registered Python handler is offered with its description, its payload started from its schema, and
    # the server's verdict on a payload shown beside it.
    await page.get_by_role("button", name="New task").click()
    form = page.get_by_role("dialog", name="New task")
    await form.get_by_label("Type", exact=True).select_option(INVOICE.name)
    await expect(page.locator("#h-type")).to_have_text(INVOICE.description)
    payload = form.get_by_label("Payload (JSON object)")
    await expect(payload).to_have_value('{\n  "customer_id": 0\n}')
    field = form.get_by_label("customer_id (required)")  # an input per simple property, from the schema
    await expect(field).to_have_value("0")
    await expect(form.get_by_label("note")).to_have_value("")
    await form.get_by_label("Name").fill("invoice-from-the-form")
    await form.get_by_role("button", name="Create task").click()
    await expect(page.locator("#e-payload")).to_contain_text("0 is less than the minimum of 1")
    await field.fill("7")
    await form.get_by_label("note").fill("first")
    await expect(payload).to_have_value('{\n  "customer_id": 7,\n  "note": "first"\n}')
    await form.get_by_label("Type", exact=True).select_option("noop")  # a payload the user wrote stays as it is
    await expect(payload).to_have_value('{\n  "customer_id": 7,\n  "note": "first"\n}')
    await form.get_by_role("button", name="Cancel").click()
    await expect(form).to_be_hidden()

    # --- The grid: 23 tasks, 20 a page; sorted by a column header either way; filtered by name prefix.
    rows = page.locator("#task-grid tbody tr")
    names = page.locator("#task-grid tbody th")
    await expect(rows).to_have_count(20)
    await expect(page.locator("#tasks-page")).to_have_text("Page 1")
    await page.get_by_role("button", name="Next page").click()
    await expect(names).to_have_text(["bulk-17", "bulk-18", "bulk-19"])  # by id: the three "soon" ones came first
    await expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    await page.get_by_role("button", name="Previous page").click()
    await expect(rows).to_have_count(20)
    await expect(names.first).to_have_text("soon-0")
    name_header = page.locator("#task-grid th[data-sort=name]")
    await name_header.get_by_role("button").click()
    await expect(name_header).to_have_attribute("aria-sort", "ascending")
    await expect(names.first).to_have_text("bulk-00")
    await name_header.get_by_role("button").click()
    await expect(name_header).to_have_attribute("aria-sort", "descending")
    await expect(names.first).to_have_text("soon-2")
    await page.get_by_label("Name starts with").fill("soon-1")
    await expect(names).to_have_text(["soon-1"])
    await page.get_by_label("Name starts with").fill("")
    await page.locator("#task-grid th[data-sort=id]").get_by_role("button").click()
    await expect(names.first).to_have_text("soon-0")

    # --- The forecast: the runs inserted above, drawn.
    summary = await forecasts.drawn(page)
    assert summary["peak_instances"] >= 2 and summary["total_runs"] >= 3
    assert max(b["required_ms"] for b in summary["buckets"]) >= 12_000
    await expect(page.locator("#capacity-summary")).to_contain_text(f"{summary['total_runs']} runs scheduled")
    await expect(page.locator("#capacity-chart .axis.left .axis-title")).to_have_text("Compute (ms per 60 s)")
    await expect(page.locator("#capacity-chart .axis.right .axis-title")).to_have_text("Instances")

    # --- Create a cron task through the form: the preview follows the typing; a bad field is named beside it.
    await page.get_by_role("button", name="New task").click()
    form = page.get_by_role("dialog", name="New task")
    await expect(form).to_be_visible()
    await form.get_by_label("Name").fill(NAME)
    await form.get_by_label("Type", exact=True).select_option("noop")
    await form.get_by_label("Cron", exact=True).check()
    await form.get_by_label("Cron expression").fill("61 * * * *")
    await expect(page.locator("#e-cron")).to_contain_text("61 is out of range")
    await expect(form.get_by_label("Cron expression")).to_have_attribute("aria-invalid", "true")
    await form.get_by_label("Cron expression").fill("0 2 * * *")
    await form.get_by_label("Time zone").fill("Europe/Paris")
    await expect(page.locator("#preview-description")).to_have_text("At 02:00 AM (Europe/Paris time)")
    await expect(page.locator("#e-cron")).to_be_empty()
    await expect(page.locator("#preview-runs li")).to_have_count(5)
    await expect(page.locator("#preview-runs li").first).to_contain_text("Europe/Paris")
    await form.get_by_label("Timeout (seconds, at most 30)").fill("99")  # the server says no, beside the field
    await form.get_by_role("button", name="Create task").click()
    await expect(page.locator("#e-timeout_seconds")).to_contain_text("more than this installation allows (30 s")
    await expect(form).to_be_visible()
    await form.get_by_label("Timeout (seconds, at most 30)").fill("10")
    await form.get_by_label("Retries").fill("2")
    await form.get_by_label("Priority (0-9)").fill("7")
    # Missed runs: the catch-up window is asked for only when every missed run is to run; a cron task may be spread.
    misfire = form.get_by_label("When a run is missed")
    catchup = form.get_by_label("Catch-up window (seconds)")
    await expect(misfire).to_have_value("once")
    await expect(catchup).to_be_hidden()
    await misfire.select_option("all")
    await expect(page.locator("#h-misfire")).to_have_text(
        "Every missed run within the catch-up window runs, oldest first; older ones are recorded as skipped."
    )
    await expect(catchup).to_have_value("86400")
    await catchup.fill("3600")
    await form.get_by_label("Grace (seconds)").fill("120")
    await form.get_by_label("Spread window (seconds)").fill("300")
    # Overlaps and limits: a hint per overlap policy; the key is asked for once a cap is set.
    overlap = form.get_by_label("If the previous run is still in flight")
    await expect(overlap).to_have_value("allow")
    await expect(page.locator("#h-overlap")).to_have_text("It runs beside the previous run.")
    await overlap.select_option("queue_one")
    await expect(page.locator("#h-overlap")).to_have_text(
        "The latest such run waits until the previous run ends; older ones are recorded as skipped."
    )
    key_input = form.get_by_label("Concurrency key")
    await expect(key_input).to_be_hidden()
    await form.get_by_label("At most at once").fill("3")
    await expect(key_input).to_be_visible()
    await key_input.fill("printer")
    await form.get_by_role("button", name="Create task").click()
    await expect(form).to_be_hidden()

    # --- In the grid, as text.
    row = page.locator("#task-grid tbody tr", has=page.get_by_role("rowheader", name=NAME, exact=True))
    await expect(row).to_have_count(1)
    await expect(names.first).to_have_text(NAME)  # newest first: a task just created is on top
    await expect(page.locator("#task-grid th[data-sort=id]")).to_have_attribute("aria-sort", "descending")
    await expect(row.locator("td.schedule")).to_have_text("cron 0 2 * * * (Europe/Paris) ≤3 at once")
    await expect(row.locator("td.schedule .cap")).to_have_attribute(
        "title", 'At most 3 runs in flight at once, counted with every task keyed "printer"'
    )
    await expect(row.locator(".priority")).to_have_text("p7")
    assert await row.locator("img").count() == 0
    created = (await api.get("/tasks", params={"name_prefix": "<img"})).json()["items"]
    assert len(created) == 1
    task = created[0]
    assert (task["name"], task["type"], task["max_retries"], task["timeout_seconds"]) == (NAME, "noop", 2, 10.0)
    assert task["schedule"] | {"at": None} == {
        "kind": "cron",
        "cron": "0 2 * * *",
        "timezone": "Europe/Paris",
        "every_seconds": None,
        "at": None,
    }
    stored = (await api.get(f"/tasks/{task['id']}")).json()
    assert {key: stored[key] for key in POLICY} == {
        "misfire": "all",
        "misfire_grace_seconds": 120,
        "catchup_window_seconds": 3600,
        "window_seconds": 300,
        "completed": False,
    }
    assert {key: stored[key] for key in LIMITS} == {
        "overlap": "queue_one",
        "max_concurrency": 3,
        "concurrency_key": "printer",
    }

    # --- Live: more runs ahead show on the next poll, with no reload.
    later = (datetime.now(UTC) + timedelta(minutes=100)).replace(second=0, microsecond=0)
    await once_runs(db, "later", later, 2, 9000)
    wanted = summary["total_runs"] + 2
    await page.wait_for_function(
        "n => parseInt(document.querySelector('#capacity-summary').textContent) >= n", arg=wanted, timeout=15_000
    )
    newer = await forecasts.drawn(page)
    assert newer["total_runs"] >= wanted
    assert max(b["required_ms"] for b in newer["buckets"]) >= 18_000

    # --- Edit: the form comes back filled in; the preview and the grid follow the change; what the form does not
    # show (the run estimate, set here behind its back) is kept, and so are the overlap policy and the cap left as
    # they were.
    await db.execute("UPDATE tasks SET estimated_ms = 4321 WHERE id = $1", task["id"])
    await row.get_by_role("button", name=f"Edit {NAME}").click()
    edit = page.get_by_role("dialog", name=f"Edit {NAME}")
    await expect(edit).to_be_visible()
    await expect(edit.get_by_label("Cron expression")).to_have_value("0 2 * * *")
    await expect(edit.get_by_label("Time zone")).to_have_value("Europe/Paris")
    await expect(edit.get_by_label("Timeout (seconds, at most 30)")).to_have_value("10")
    await expect(edit.get_by_label("When a run is missed")).to_have_value("all")
    await expect(edit.get_by_label("Catch-up window (seconds)")).to_have_value("3600")
    await expect(edit.get_by_label("Grace (seconds)")).to_have_value("120")
    await expect(edit.get_by_label("Spread window (seconds)")).to_have_value("300")
    await expect(edit.get_by_label("If the previous run is still in flight")).to_have_value("queue_one")
    await expect(edit.get_by_label("At most at once")).to_have_value("3")
    await expect(edit.get_by_label("Concurrency key")).to_have_value("printer")
    await expect(edit.get_by_label("Priority (0-9)")).to_have_value("7")
    await edit.get_by_label("Cron expression").fill("30 3 * * 1-5")
    # Skip: the catch-up window goes from the form and keeps its value (a PUT replaces the whole definition).
    await edit.get_by_label("When a run is missed").select_option("skip")
    await expect(edit.get_by_label("Catch-up window (seconds)")).to_be_hidden()
    await edit.get_by_label("Grace (seconds)").fill("90")
    await edit.get_by_label("Spread window (seconds)").fill("120")
    await expect(page.locator("#preview-description")).to_have_text(
        "At 03:30 AM, Monday through Friday (Europe/Paris time)"
    )
    await edit.get_by_role("button", name="Save changes").click()
    await expect(edit).to_be_hidden()
    await expect(row.locator("td.schedule")).to_have_text("cron 30 3 * * 1-5 (Europe/Paris) ≤3 at once")
    edited = (await api.get(f"/tasks/{task['id']}")).json()
    assert edited["schedule"]["cron"] == "30 3 * * 1-5"
    assert (edited["name"], edited["max_retries"], edited["timeout_seconds"], edited["active"]) == (NAME, 2, 10.0, True)
    assert edited["estimated_ms"] == 4321
    assert edited["priority"] == 7  # kept through the edit, as the form showed it
    assert {key: edited[key] for key in LIMITS} == {
        "overlap": "queue_one",
        "max_concurrency": 3,
        "concurrency_key": "printer",
    }
    assert {key: edited[key] for key in POLICY} == {
        "misfire": "skip",
        "misfire_grace_seconds": 90,
        "catchup_window_seconds": 3600,
        "window_seconds": 120,
        "completed": False,
    }

    # --- The server's verdict on the missed-run, limit and spread fields, beside each; a one-off is never spread and
    # has no overlaps, so the window and the overlap policy the form still holds are not sent for one.
    await page.get_by_role("button", name="New task").click()
    form = page.get_by_role("dialog", name="New task")
    await form.get_by_label("Name").fill("spread-too-wide")
    await form.get_by_label("Type", exact=True).select_option("noop")
    spread = form.get_by_label("Spread window (seconds)")
    overlap = form.get_by_label("If the previous run is still in flight")
    cap = form.get_by_label("At most at once")
    key_input = form.get_by_label("Concurrency key")
    await expect(spread).to_be_hidden()  # immediately: nothing to spread, nothing to overlap
    await expect(overlap).to_be_hidden()
    await expect(cap).to_have_value("")  # a new task's form starts uncapped, whatever the last one held
    await expect(key_input).to_be_hidden()
    await form.get_by_label("Every N seconds").check()
    await form.get_by_label("Every (seconds)").fill("60")
    await expect(overlap).to_have_value("allow")
    await overlap.select_option("skip")
    await expect(page.locator("#h-overlap")).to_have_text("It is recorded as skipped.")
    await form.get_by_label("Grace (seconds)").fill("0")
    await cap.fill("0")
    await form.get_by_role("button", name="Create task").click()
    await expect(page.locator("#e-misfire_grace_seconds")).to_have_text("Input should be greater than or equal to 1")
    await expect(page.locator("#e-max_concurrency")).to_have_text("Input should be greater than or equal to 1")
    await expect(form.get_by_label("Grace (seconds)")).to_have_attribute("aria-invalid", "true")
    await expect(cap).to_have_attribute("aria-invalid", "true")
    await form.get_by_label("Grace (seconds)").fill("60")
    # A key without a cap: the field keeps the key in view when the cap is emptied, and the server's reason (a check
    # across fields, naming concurrency_key first) is shown beside it.
    await cap.fill("2")
    await key_input.fill("printer")
    await cap.fill("")
    await expect(key_input).to_be_visible()
    await form.get_by_role("button", name="Create task").click()
    await expect(page.locator("#e-concurrency_key")).to_have_text(
        "give max_concurrency too (the cap the key's runs are held to)"
    )
    await expect(key_input).to_have_attribute("aria-invalid", "true")
    await expect(key_input).to_be_focused()
    await expect(page.locator("#e-max_concurrency")).to_be_empty()
    await expect(page.locator("#e-misfire_grace_seconds")).to_be_empty()
    await expect(page.locator("#form-error")).to_be_hidden()  # beside the field, not at the top
    await key_input.fill("")
    await spread.fill("300")
    await form.get_by_role("button", name="Create task").click()
    await expect(page.locator("#e-window_seconds")).to_have_text(
        "at most the interval (60 s), or occurrences would change order"
    )
    await expect(spread).to_have_attribute("aria-invalid", "true")
    await expect(spread).to_be_focused()
    await expect(page.locator("#e-concurrency_key")).to_be_empty()
    await expect(page.locator("#form-error")).to_be_hidden()
    await expect(form).to_be_visible()
    await form.get_by_label("Once, at a time").check()
    await expect(spread).to_be_hidden()
    await expect(overlap).to_be_hidden()
    tomorrow = datetime.now() + timedelta(days=1)  # the browser's zone is this machine's
    await form.get_by_label(re.compile(r"^Run at")).fill(tomorrow.strftime("%Y-%m-%dT%H:%M:%S"))
    await form.get_by_role("button", name="Create task").click()
    await expect(form).to_be_hidden()
    (one_off,) = (await api.get("/tasks", params={"name_prefix": "spread-too-wide"})).json()["items"]
    assert (one_off["schedule"]["kind"], one_off["window_seconds"], one_off["misfire_grace_seconds"]) == ("once", 0, 60)
    assert {key: one_off[key] for key in LIMITS} == {
        "overlap": "allow",
        "max_concurrency": None,
        "concurrency_key": None,
    }
    one_off_row = page.locator("#task-grid tbody tr", has=page.get_by_role("rowheader", name="spread-too-wide"))
    await expect(one_off_row).to_have_count(1)
    await expect(one_off_row.locator("td.schedule .cap")).to_have_count(0)  # uncapped: no limit beside it

    # --- Deactivate with the row's switch: the grid and the API agree.
    switch = row.get_by_role("switch", name=f"Active: {NAME}")
    await expect(switch).to_be_checked()
    await switch.click()
    await expect(row.get_by_role("switch", name=f"Active: {NAME}")).not_to_be_checked()
    await expect(row.locator("td.active")).to_have_text("inactive")
    assert (await api.get(f"/tasks/{task['id']}")).json()["active"] is False
    await page.get_by_label("State").select_option("false")
    await expect(page.locator("#task-grid tbody tr")).to_have_count(1)
    await expect(page.get_by_role("rowheader", name=NAME, exact=True)).to_be_visible()

    # --- A run's logs: attempts with their output and status changes, output shown as text.
    run_id = await finished_run(db, task["id"])
    await page.get_by_label("Status", exact=True).select_option("failed")
    await page.get_by_role("button", name=f"Logs of run {run_id}").click()
    logs = page.get_by_role("dialog", name=re.compile(f"Run #{run_id}"))
    await expect(logs).to_be_visible()
    await expect(logs.locator(".attempt")).to_have_count(1)
    await expect(logs.locator(".facts").first).to_contain_text(f"{NAME} (#{task['id']})")
    await expect(logs).not_to_contain_text("null")
    await expect(logs.locator(".attempt .log pre").nth(0)).to_have_text("exit code 3")
    await expect(logs.locator(".attempt .log pre").nth(1)).to_have_text("<script>window.__pwned=1</script>")
    await expect(logs.locator(".attempt .log pre").nth(2)).to_have_text("oops")
    await expect(logs.locator("table tbody tr")).to_have_count(3)  # scheduled, running, failed
    await logs.get_by_role("button", name="Close").click()
    await expect(logs).to_be_hidden()

    # --- Runs waiting for a type no live processor serves (no processor runs in this test): named at the top.
    await expect(page.locator("#unserved")).to_be_hidden()
    await create_tasks(db, [TaskCreate(name="invoice-7", type=INVOICE.name, payload={"customer_id": 7})])
    notice = page.get_by_role("alert").filter(has_text="no live processor serves their type")
    await expect(notice).to_be_visible()
    await expect(notice.locator("li")).to_have_text(
        ["billing.send_invoice: 1 due run (no live processor serves this type)"]
    )

    # --- A one-off whose run has ended is marked completed, and found by the filter (no processor runs here: its
    # run is settled in the database, in the transaction that makes it, so no poll sees it due).
    async with db.transaction():
        done = await new_task(db, "one-off-done")
        await db.execute(
            "UPDATE task_schedule SET status = 'running', attempt = 1, started_at = now() WHERE task_id = $1", done.id
        )
        await db.execute(
            "UPDATE task_schedule SET status = 'succeeded', finished_at = now() WHERE task_id = $1", done.id
        )
    assert (await api.get(f"/tasks/{done.id}")).json()["completed"] is True
    await page.get_by_label("State").select_option("")
    await page.get_by_label("Completion").select_option("true")
    await expect(names).to_have_text(["one-off-done"])
    await expect(rows.first.locator("td.active .badge")).to_have_text("completed")
    await page.get_by_label("Completion").select_option("false")  # invoice-7's run is still due: not completed
    await expect(page.get_by_role("rowheader", name="invoice-7", exact=True)).to_be_visible()
    await expect(page.get_by_role("rowheader", name="one-off-done", exact=True)).to_have_count(0)
    await expect(page.locator("#task-grid td.active .badge")).to_have_count(0)


async def finished_run(db: asyncpg.Connection, task_id: int) -> int:
    """A run of the task that ran and failed a minute ago, its output holding markup."""
    run_id: int = await db.fetchval(
        "INSERT INTO task_schedule (task_id, scheduled_time) VALUES ($1, now() - interval '1 minute') RETURNING id",
        task_id,
    )
    await db.execute(
        "UPDATE task_schedule SET status = 'running', attempt = 1, started_at = now() WHERE id = $1", run_id
    )
    await db.execute(
        "UPDATE task_schedule SET status = 'failed', finished_at = now(), error = 'exit code 3' WHERE id = $1", run_id
    )
    result = {"exit_code": 3, "stdout": "<script>window.__pwned=1</script>", "stderr": "oops"}
    await db.execute(
        """INSERT INTO task_results (run_id, attempt, status, started_at, finished_at, duration_ms, worker, result,
                                     error, scheduled_time)
           VALUES ($1, 1, 'failed', now(), now(), 12.5, 'w1', $2::jsonb, 'exit code 3',
                   (SELECT scheduled_time FROM task_schedule WHERE id = $1))""",
        run_id,
        result,
    )
    return run_id


# A diamond: b and c after a, d after both; b takes long enough for the page to see d wait on it.
DIAMOND = {
    "name": "diamond",
    "description": "a, then b and c, then d",
    "tasks": [
        {"name": "a", "type": "noop"},
        {"name": "b", "type": "sleep", "payload": {"ms": 2500}, "depends_on": ["a"]},
        {"name": "c", "type": "noop", "depends_on": ["a"]},
        {"name": "d", "type": "noop", "depends_on": ["b", "c"]},
    ],
}

# Every node's status, read in one go once b runs (a poll may redraw the graph between two separate reads): while b
# runs, a has succeeded and d waits on b, whatever c is doing.
WHILE_B_RUNS = """() => {
    const nodes = [...document.querySelectorAll("#workflow-graph .node")];
    const status = Object.fromEntries(nodes.map((n) => [n.dataset.step, n.dataset.status]));
    if (status.b !== "running") return null;
    return { status, cancel: !document.querySelector("#workflow-cancel").hidden };
}"""

# Each node's left edge, to check the layout by level.
NODE_X = """() => Object.fromEntries([...document.querySelectorAll("#workflow-graph .node")].map(
    (n) => [n.dataset.step, n.getBoundingClientRect().left]))"""


async def test_the_dashboard_runs_a_workflow_and_its_graph_follows_the_run_live(
    browser: Browser, settings: Settings, tmp_path: Path
) -> None:
    page = await browser.new_page(viewport={"width": 1366, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        async with (
            served_api(settings.model_copy(update={"jwt_secret": SECRET})) as (base, _),
            httpx.AsyncClient(base_url=base, headers=bearer()) as api,
            running(distributor.service.run, settings),
            running(processor.service.run, settings),
        ):
            created = await api.post("/workflows", json=DIAMOND)
            assert created.status_code == 201, created.text
            await run_the_diamond(page, base, api)
    except BaseException:
        await page.screenshot(path=tmp_path / "workflow.png", full_page=True)
        print(f"screenshot: {tmp_path / 'workflow.png'}; page errors: {errors}")
        raise
    assert errors == []


async def run_the_diamond(page: Page, base: str, api: httpx.AsyncClient) -> None:
    # --- Listed: its schedule (none: it runs when invoked), its four steps, no run yet; a token that may only read
    # is not offered Run now.
    await page.goto(f"{base}/")
    await page.get_by_label("Token", exact=True).fill(bearer("tasks:read")["Authorization"].removeprefix("Bearer "))
    await page.get_by_role("button", name="Use this token").click()
    panel = page.locator("section#workflows")
    await expect(panel.get_by_role("heading", name="Workflows", exact=True)).to_be_visible()
    row = panel.locator("#workflow-grid tbody tr", has=page.get_by_role("rowheader", name="diamond", exact=True))
    await expect(row).to_have_count(1)
    await expect(row.locator("td")).to_have_text(["when invoked", "4", "No runs yet", "Show runs"])
    await row.get_by_role("button", name="Show runs").click()
    await expect(panel.get_by_role("heading", name="Runs of diamond")).to_be_focused()
    await expect(page.locator("#workflow-runs-status")).to_have_text("No runs yet.")
    await page.get_by_role("button", name="API token…").click()
    await page.get_by_label("Token", exact=True).fill(api.headers["Authorization"].removeprefix("Bearer "))
    await page.get_by_role("button", name="Use this token").click()
    await expect(row.locator("td")).to_have_text(["when invoked", "4", "No runs yet", "Run nowShow runs"])
    await expect(page.locator("#workflow-runs-status")).to_have_text("No runs yet: start one with Run now.")
    await page.evaluate("() => { window.__samePage = true; }")  # gone if anything reloads the page

    # --- Run now: the new run drawn at once, a node per step, an arrow per dependency, a column per level.
    await row.get_by_role("button", name="Run now").click()
    graph = page.get_by_role("img", name=re.compile(r"^Steps of workflow run #\d+ of diamond"))
    await expect(graph).to_be_visible()
    nodes = graph.locator(".node")
    await expect(nodes).to_have_count(4)
    await expect(graph.locator(".edge")).to_have_count(4)
    edges = await graph.locator(".edge").evaluate_all("es => es.map((e) => e.dataset.from + '>' + e.dataset.to)")
    assert sorted(edges) == ["a>b", "a>c", "b>d", "c>d"]
    x = await page.evaluate(NODE_X)
    assert x["a"] < x["b"] == x["c"] < x["d"], x
    (run,) = (await api.get("/workflows/diamond/runs", params={"limit": 5})).json()
    await expect(page.locator("#workflow-run-title")).to_contain_text(f"Run #{run['id']} of diamond")
    await expect(page.locator("#workflow-run-grid tbody tr[aria-current=true]")).to_contain_text(f"#{run['id']}")

    # --- While b sleeps: a has succeeded and d waits on b; the run may be cancelled.
    seen = await (await page.wait_for_function(WHILE_B_RUNS, timeout=15_000, polling=50)).json_value()
    assert seen["status"]["a"] == "succeeded", seen
    assert seen["status"]["d"] == "blocked", seen
    assert seen["cancel"] is True, seen

    # --- Without a reload, every node ends succeeded; the run's end shows in its title, its workflow's runs and
    # the list, and Cancel run goes.
    for step in ("a", "b", "c", "d"):
        await expect(graph.locator(f'.node[data-step="{step}"]')).to_have_attribute(
            "data-status", "succeeded", timeout=20_000
        )
    await expect(page.locator("#workflow-run-title .badge")).to_have_text("succeeded")
    await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    await expect(page.locator("#workflow-run-grid tbody tr").first.locator(".badge")).to_have_text("succeeded")
    await expect(row.locator("td.latest .badge")).to_have_text("succeeded")
    # The text alternative says the same, with each step's level.
    steps = page.locator("#workflow-step-table tbody tr")
    await expect(steps.locator("th")).to_have_text(["a", "b", "c", "d"])
    await expect(steps.locator("td:nth-child(2)")).to_have_text(["0", "1", "1", "2"])
    await expect(steps.locator(".badge")).to_have_text(["succeeded"] * 4)
    assert await page.evaluate("() => window.__samePage") is True

    # --- Hide runs: the runs and the graph go, the focus back to the row's Show runs.
    await panel.get_by_role("button", name="Hide runs").click()
    await expect(page.locator("#workflow-detail")).to_be_hidden()
    await expect(row.get_by_role("button", name="Show runs")).to_be_focused()
    ended = (await api.get(f"/workflow-runs/{run['id']}")).json()
    assert ended["status"] == "succeeded"
    assert {r["task"]: r["status"] for r in ended["runs"]} == dict.fromkeys("abcd", "succeeded")
