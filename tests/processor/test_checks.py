"""Pre-run checks and run-if conditions of command tasks (SPEC P7): real commands through the whole pipeline, the
outcome read back from the database."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError

from taskmill.models import TaskCreate
from taskmill.settings import Settings
from tests.helpers import new_task
from tests.processor.test_tasktypes import only_result, run_pipeline

MARK = ["sh", "-c", "echo ran > ran.txt; echo done"]


def _payload(tmp_path: Path, **fields: object) -> dict[str, object]:
    return {"argv": MARK, "cwd": str(tmp_path), **fields}


async def test_checks_that_pass_let_the_command_run(settings: Settings, db: asyncpg.Connection, tmp_path: Path) -> None:
    checks = [["true"], ["sh", "-c", "test -d ."]]
    task = await new_task(db, "checked", "command", _payload(tmp_path, checks=checks, run_if=["true"]))
    await run_pipeline(settings, db, {"succeeded": 1})
    row = await only_result(db, task.id)
    assert row["result"]["stdout"] == "done\n"
    assert (tmp_path / "ran.txt").exists()


async def test_a_failing_check_fails_the_run_naming_it_and_the_command_never_runs(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    checks = [["true"], ["sh", "-c", "echo the disk is full >&2; exit 3"], ["false"]]
    task = await new_task(db, "checked", "command", _payload(tmp_path, checks=checks))
    await run_pipeline(settings, db, {"failed": 1})
    row = await only_result(db, task.id)
    assert row["run_error"] == "check 2 failed: sh -c 'echo the disk is full >&2; exit 3' exit 3: the disk is full"
    assert row["result"]["exit_code"] == 3
    assert not (tmp_path / "ran.txt").exists()


async def test_a_run_if_that_says_no_skips_the_run_with_the_reason(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    run_if = ["sh", "-c", "echo not a business day >&2; exit 1"]
    task = await new_task(db, "weekdays", "command", _payload(tmp_path, run_if=run_if), max_retries=3)
    await run_pipeline(settings, db, {"skipped": 1})
    row = await only_result(db, task.id)
    assert (row["run_status"], row["status"], row["attempt"]) == ("skipped", "skipped", 1)  # no retry: not a failure
    assert row["run_error"] == "run_if sh -c 'echo not a business day >&2; exit 1' exit 1: not a business day"
    assert not (tmp_path / "ran.txt").exists()
    path = await db.fetch("SELECT to_status::text FROM run_audit ORDER BY at")
    assert [r[0] for r in path] == ["scheduled", "queued", "running", "skipped"]


async def test_a_check_that_cannot_start_fails_the_run_saying_so(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    task = await new_task(db, "checked", "command", _payload(tmp_path, checks=[["no-such-program-here"]]))
    await run_pipeline(settings, db, {"failed": 1})
    assert (await only_result(db, task.id))["run_error"] == "cannot start 'no-such-program-here': no such executable"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"checks": [["true"], []]}, "checks: Value error, check 2 must be a non-empty argv without NUL characters"),
        ({"run_if": []}, "run_if: Value error, must be a non-empty argv without NUL characters"),
    ],
)
def test_an_empty_check_or_run_if_is_refused_naming_it(fields: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)):
        TaskCreate(name="t", type="command", payload={"argv": ["true"], **fields})
