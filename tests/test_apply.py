"""`taskmill apply -f` and `taskmill get -o yaml`, as processes against the API on a real socket: idempotent by
name, changes named field by field, errors naming file, line and field, dry runs, pruning, and a round trip."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet

from taskmill.secrets import open_sealed
from taskmill.settings import Settings
from taskmill.tokens import mint
from tests.api.conftest import SECRET, served_api
from tests.helpers import taskmill

ETL = """\
kind: workflow
name: nightly-etl
schedule: {kind: cron, cron: "0 2 * * *", timezone: Europe/Paris}
tasks:
  - name: extract
    type: noop
    payload: {step: extract}
  - name: load
    type: noop
    payload: {step: load}
    depends_on: [extract]
---
kind: task
name: report
type: noop
payload: {what: report}
schedule: {kind: interval, every_seconds: 3600}
"""

SHORTHAND = """\
kind: workflow
name: tandem
sequence:
  - {name: fetch, type: noop}
  - parallel:
      - {name: left, type: noop}
      - {name: right, type: noop}
  - {name: merge, type: noop}
"""


@pytest.fixture
async def api_env(settings: Settings) -> AsyncIterator[dict[str, str]]:
    async with served_api(settings.model_copy(update={"jwt_secret": SECRET})) as (base, _):
        yield {"TASKMILL_API": base, "TASKMILL_TOKEN": mint(SECRET, "ops", "tasks:read tasks:write")}


async def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(taskmill, *args, **env)


async def test_applying_a_file_twice_changes_nothing_the_second_time(
    api_env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "etl.yaml").write_text(ETL)
    first = await _run(api_env, "apply", "-f", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["workflow/nightly-etl created", "task/report created"]
    updated = await db.fetchval("SELECT updated_at FROM workflows WHERE name = 'nightly-etl'")
    second = await _run(api_env, "apply", "-f", str(tmp_path / "etl.yaml"))
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["workflow/nightly-etl unchanged", "task/report unchanged"]
    assert await db.fetchval("SELECT updated_at FROM workflows WHERE name = 'nightly-etl'") == updated
    steps = await db.fetch(
        "SELECT t.name, t.depends_on FROM tasks t JOIN workflows w ON w.id = t.workflow_id "
        "WHERE t.deleted_at IS NULL ORDER BY t.id"
    )
    assert [(r["name"], r["depends_on"]) for r in steps] == [("extract", []), ("load", ["extract"])]


async def test_a_change_is_applied_and_named_field_by_field_and_a_dry_run_changes_nothing(
    api_env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "etl.yaml"
    path.write_text(ETL)
    assert (await _run(api_env, "apply", "-f", str(path))).returncode == 0
    path.write_text(ETL.replace('"0 2 * * *"', '"30 3 * * *"').replace("{step: load}", "{step: load, v: 2}"))
    dry = await _run(api_env, "apply", "-f", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "workflow/nightly-etl changed (schedule.cron, tasks[1].payload.v) (dry run)",
        "task/report unchanged",
    ]
    assert await db.fetchval("SELECT cron FROM workflows WHERE name = 'nightly-etl'") == "0 2 * * *"
    done = await _run(api_env, "apply", "-f", str(path))
    assert done.stdout.splitlines()[0] == "workflow/nightly-etl changed (schedule.cron, tasks[1].payload.v)"
    assert await db.fetchval("SELECT cron FROM workflows WHERE name = 'nightly-etl'") == "30 3 * * *"
    again = await _run(api_env, "apply", "-f", str(path))
    assert again.stdout.splitlines() == ["workflow/nightly-etl unchanged", "task/report unchanged"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (ETL.replace("depends_on: [extract]", "depends_on: [extrakt]"),
         "etl.yaml:11: workflow nightly-etl: tasks.1.depends_on: no step named 'extrakt' in this workflow"),
        (ETL.replace("every_seconds: 3600", "every_seconds: -5"),
         "etl.yaml:17: task report: schedule.every_seconds: Input should be greater than or equal to 1"),
        (ETL.replace("kind: task", "kind: tsak"), "etl.yaml:13: kind: one of task, workflow (got 'tsak')"),
        (ETL.replace("    type: noop\n    payload: {step: load}", "    tpye: noop\n    payload: {step: load}"),
         "etl.yaml:9: workflow nightly-etl: tasks.1.tpye: Extra inputs are not permitted"),
        ("kind: task\nname: [unclosed\n", "etl.yaml:3: not YAML"),
    ],
)  # fmt: skip
async def test_an_error_names_the_file_the_line_and_the_field_and_nothing_is_applied(
    api_env: dict[str, str], db: asyncpg.Connection, tmp_path: Path, text: str, error: str
) -> None:
    (tmp_path / "etl.yaml").write_text(text)
    refused = await _run(api_env, "apply", "-f", str(tmp_path / "etl.yaml"))
    assert refused.returncode == 1
    assert f"{tmp_path}/{error}" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert await db.fetchval("SELECT count(*) FROM workflows") == 0
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0


async def test_a_server_refusal_names_the_file_and_line_too(
    api_env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    """A handler type no processor registered is known to the API only: its 422 comes back at the right line."""
    (tmp_path / "etl.yaml").write_text(ETL.replace("type: noop\n    payload: {step: load}", "type: etl.load"))
    refused = await _run(api_env, "apply", "-f", str(tmp_path))
    assert refused.returncode == 1
    assert f"{tmp_path}/etl.yaml:9: workflow nightly-etl: tasks.1.type: unknown task type 'etl.load'" in refused.stderr


async def test_get_writes_what_apply_takes_back_unchanged_and_prune_deletes_what_the_files_leave_out(
    api_env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "etl.yaml").write_text(ETL)
    (tmp_path / "tandem.yml").write_text(SHORTHAND)
    assert (await _run(api_env, "apply", "-f", str(tmp_path))).returncode == 0
    tasks = await _run(api_env, "get", "tasks", "-o", "yaml")
    flows = await _run(api_env, "get", "workflows", "-o", "yaml")
    assert tasks.returncode == 0 and flows.returncode == 0, tasks.stderr + flows.stderr
    assert "name: report" in tasks.stdout and "kind: task" in tasks.stdout
    assert "depends_on:\n  - fetch" in flows.stdout  # the shorthand comes back as edges
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "tasks.yaml").write_text(tasks.stdout)
    (exported / "workflows.yaml").write_text(flows.stdout)
    back = await _run(api_env, "apply", "-f", str(exported))
    assert back.returncode == 0, back.stderr
    assert sorted(back.stdout.splitlines()) == [
        "task/report unchanged",
        "workflow/nightly-etl unchanged",
        "workflow/tandem unchanged",
    ]
    one = await _run(api_env, "get", "workflows", "tandem", "-o", "yaml")
    assert one.stdout.startswith("kind: workflow\nname: tandem\n")

    (exported / "workflows.yaml").write_text(SHORTHAND)
    pruned = await _run(api_env, "apply", "-f", str(exported), "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines() == [
        "task/report unchanged",
        "workflow/tandem unchanged",
        "workflow/nightly-etl deleted",
    ]
    assert await db.fetchval("SELECT deleted_at IS NOT NULL FROM workflows WHERE name = 'nightly-etl'")


SECRETS = """\
kind: task
name: caller
type: noop
schedule: {kind: interval, every_seconds: 3600}
secrets: {TOKEN: first-value, OTHER: kept}
---
kind: workflow
name: guarded
tasks:
  - {name: fetch, type: noop, secrets: {KEY: step-value}}
  - {name: store, type: noop, depends_on: [fetch]}
"""


async def _opened(db: asyncpg.Connection, key: str, where: str) -> dict[str, str]:
    """A task's secrets as a processor would decrypt them."""
    sealed = await db.fetchval(f"SELECT secrets FROM tasks WHERE deleted_at IS NULL AND {where}")
    return open_sealed(key, sealed.decode())


async def test_a_file_that_only_rotates_a_secret_is_applied_and_says_which(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    key = Fernet.generate_key().decode()
    served = settings.model_copy(update={"jwt_secret": SECRET, "secret_key": key})
    path = tmp_path / "secrets.yaml"
    path.write_text(SECRETS)
    async with served_api(served) as (base, _):
        env = {"TASKMILL_API": base, "TASKMILL_TOKEN": mint(SECRET, "ops", "tasks:read tasks:write")}
        assert (await _run(env, "apply", "-f", str(path))).stdout.splitlines() == [
            "task/caller created", "workflow/guarded created"
        ]  # fmt: skip
        again = await _run(env, "apply", "-f", str(path))
        assert again.stdout.splitlines() == ["task/caller unchanged", "workflow/guarded unchanged"], again.stderr

        path.write_text(SECRETS.replace("first-value", "second-value").replace("step-value", "new-step-value"))
        dry = await _run(env, "apply", "-f", str(path), "--dry-run")
        assert dry.stdout.splitlines() == [
            "task/caller changed (secrets.TOKEN) (dry run)",
            "workflow/guarded changed (tasks[0].secrets.KEY) (dry run)",
        ], dry.stderr
        assert (await _opened(db, key, "name = 'caller'"))["TOKEN"] == "first-value"
        done = await _run(env, "apply", "-f", str(path))
        assert done.stdout.splitlines() == [
            "task/caller changed (secrets.TOKEN)", "workflow/guarded changed (tasks[0].secrets.KEY)"
        ]  # fmt: skip
        assert await _opened(db, key, "name = 'caller'") == {"TOKEN": "second-value", "OTHER": "kept"}
        assert await _opened(db, key, "name = 'fetch'") == {"KEY": "new-step-value"}
        last = await _run(env, "apply", "-f", str(path))
        assert last.stdout.splitlines() == ["task/caller unchanged", "workflow/guarded unchanged"]
    # The digests say nothing of the values to a reader of the database.
    digests = await db.fetchval("SELECT secret_digests FROM tasks WHERE name = 'caller'")
    assert set(digests) == {"TOKEN", "OTHER"} and "second-value" not in str(digests)
