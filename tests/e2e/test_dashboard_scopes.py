"""The dashboard shows only what the token may do (GET /me), in a real headless Chromium against the real API and
database: a tasks:read token sees the tasks and no control that changes one; tasks:write creates a noop task through
the form, which offers no `command` type and no edit of a command task, and shows the API's reason when a write is
refused all the same; tasks:command (read from storage on a reload) offers both and creates a command task; a token
without tasks:read is asked to be replaced, with the reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, Route, expect

from taskmill.models import Schedule, TaskCreate
from taskmill.settings import Settings
from taskmill.store.tasks import create_tasks
from tests.api.conftest import SECRET, bearer, served_api
from tests.e2e.tokens import paste

pytestmark = pytest.mark.slow

REASON = "creating or editing a command task needs the scope 'tasks:command'"
ARGV = '{"argv": ["true"]}'


def token(scope: str, sub: str) -> str:
    return bearer(scope, sub)["Authorization"].removeprefix("Bearer ")


async def test_the_dashboard_offers_only_what_the_token_may_do(
    browser: Browser,
    settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    yearly = Schedule(kind="cron", cron="0 0 1 1 *")  # nothing due while the test runs
    await create_tasks(
        db,
        [
            TaskCreate(name="report", type="noop", schedule=yearly),
            TaskCreate(name="backup", type="command", payload={"argv": ["true"]}, schedule=yearly),
        ],
    )
    page = await browser.new_page(viewport={"width": 1366, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        async with served_api(settings.model_copy(update={"jwt_secret": SECRET})) as (base, _):
            async with httpx.AsyncClient(base_url=base, headers=bearer("tasks:read")) as api:
                every_type = [t["name"] for t in (await api.get("/task-types")).json()]
            assert "command" in every_type and "noop" in every_type
            await exercise(page, base, db, every_type)
    except BaseException:
        await page.screenshot(path=tmp_path / "scopes.png", full_page=True)
        print(f"screenshot: {tmp_path / 'scopes.png'}; page errors: {errors}")
        raise
    assert errors == []


def row(page: Page, name: str) -> Locator:
    return page.locator("#task-grid tbody tr", has=page.get_by_role("rowheader", name=name, exact=True))


async def offered_types(page: Page) -> list[str]:
    return await page.locator("#f-type option").all_text_contents()


async def stored(db: asyncpg.Connection, name: str) -> dict[str, Any] | None:
    found = await db.fetchrow("SELECT type, payload, created_by FROM tasks WHERE name = $1", name)
    return None if found is None else dict(found)


async def exercise(page: Page, base: str, db: asyncpg.Connection, every_type: list[str]) -> None:
    grid = page.locator("#task-grid")
    names = grid.locator("tbody th")
    new_task = page.get_by_role("button", name="New task")
    # By CSS, not by role: the last case counts them behind a modal dialog, which hides them from the role tree.
    edits = grid.locator("button[aria-label^='Edit ']")
    switches = grid.locator("input[role=switch]")
    form = page.get_by_role("dialog", name="New task")

    # --- tasks:read: the tasks and their runs, nothing that changes one.
    await page.goto(f"{base}/")
    await paste(page, token("tasks:read", "reader"))
    await expect(page.get_by_role("dialog", name="API token")).to_be_hidden()
    await expect(names).to_have_text(["report", "backup"])
    await expect(grid.get_by_role("button", name=re.compile("^Runs of "))).to_have_count(2)  # the actions drawn
    await expect(page.locator("#whoami")).to_have_text("Signed in as reader · tasks:read")
    await expect(page.locator("#api-state")).to_have_text("Connected")
    await expect(new_task).to_be_hidden()
    await expect(page.locator("#new-task")).to_have_attribute("hidden", "")
    await expect(edits).to_have_count(0)
    await expect(switches).to_have_count(0)
    await expect(grid.locator("td.active")).to_have_text(["active", "active"])  # the state, as text

    # --- tasks:write: switches, New task, Edit but for the command task; the form offers every type but command.
    await paste(page, token("tasks:read tasks:write", "writer"))
    await expect(page.locator("#whoami")).to_have_text("Signed in as writer · tasks:read tasks:write")
    await expect(new_task).to_be_visible()
    await expect(switches).to_have_count(2)  # pausing a command task changes no program: allowed
    await expect(edits).to_have_count(1)
    await expect(row(page, "report").get_by_role("button", name="Edit report")).to_be_visible()
    await expect(row(page, "backup").get_by_role("button", name="Edit backup")).to_have_count(0)
    await new_task.click()
    await expect(form).to_be_visible()
    assert await offered_types(page) == [t for t in every_type if t != "command"]
    await form.get_by_label("Name").fill("made-by-writer")
    await form.get_by_label("Type", exact=True).select_option("noop")
    await form.get_by_role("button", name="Create task").click()
    await expect(form).to_be_hidden()
    await expect(names.first).to_have_text("made-by-writer")  # newest first
    assert await stored(db, "made-by-writer") == {"type": "noop", "payload": {}, "created_by": "writer"}

    # --- The page thinks the token may write command tasks (its scopes changed since, say): the API refuses, and
    # the form shows its reason where its other errors go.
    async def claims_commands(route: Route) -> None:
        response = await route.fetch()
        await route.fulfill(response=response, json=await response.json() | {"may_write_commands": True})

    await page.route(f"{base}/me", claims_commands)
    await paste(page, token("tasks:read tasks:write", "writer"))
    await expect(edits).to_have_count(3)
    await new_task.click()
    await expect(form).to_be_visible()
    assert await offered_types(page) == every_type
    await form.get_by_label("Name").fill("sneaky")
    await form.get_by_label("Type", exact=True).select_option("command")
    await form.get_by_label("Payload (JSON object)").fill(ARGV)
    await form.get_by_role("button", name="Create task").click()
    await expect(page.locator("#form-error")).to_have_text(REASON)
    await expect(page.locator("#form-error")).to_be_visible()
    await expect(form).to_be_visible()
    assert await stored(db, "sneaky") is None
    await form.get_by_role("button", name="Cancel").click()
    await page.unroute(f"{base}/me")

    # --- tasks:command, the token read from storage on a reload: command offered, a command task created and
    # editable.
    await page.evaluate(
        "t => localStorage.setItem('taskmill.token', t)", token("tasks:read tasks:write tasks:command", "operator")
    )
    await page.reload()
    await expect(page.locator("#whoami")).to_have_text("Signed in as operator · tasks:command tasks:read tasks:write")
    await expect(page.get_by_role("dialog", name="API token")).to_be_hidden()
    await expect(names).to_have_count(3)
    await expect(edits).to_have_count(3)
    await expect(switches).to_have_count(3)
    await new_task.click()
    await expect(form).to_be_visible()
    assert await offered_types(page) == every_type
    await form.get_by_label("Name").fill("made-by-operator")
    await form.get_by_label("Type", exact=True).select_option("command")
    await form.get_by_label("Payload (JSON object)").fill(ARGV)
    await form.get_by_role("button", name="Create task").click()
    await expect(form).to_be_hidden()
    await expect(names.first).to_have_text("made-by-operator")
    assert await stored(db, "made-by-operator") == {
        "type": "command",
        "payload": {"argv": ["true"]},
        "created_by": "operator",
    }
    await row(page, "backup").get_by_role("button", name="Edit backup").click()
    edit = page.get_by_role("dialog", name="Edit backup")
    await expect(edit.get_by_label("Type", exact=True)).to_have_value("command")
    await edit.get_by_role("button", name="Cancel").click()
    await expect(edit).to_be_hidden()

    # --- A token that may not read: asked to be replaced, saying why; nothing that changes a task is left.
    await paste(page, token("tasks:command", "stranger"), accepted=False)
    await expect(page.locator("#token-reason")).to_have_text(
        "The token of stranger lacks the scope 'tasks:read', which the dashboard needs."
    )
    await expect(page.get_by_role("dialog", name="API token")).to_be_visible()
    await expect(page.locator("#new-task")).to_have_attribute("hidden", "")
    await expect(edits).to_have_count(0)
    await expect(switches).to_have_count(0)
