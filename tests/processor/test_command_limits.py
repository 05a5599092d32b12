"""Command limits (`limits: {memory_mb, cpu_seconds, file_mb}`): checked at creation, set with setrlimit in the
child, and a command that runs into one fails with a reason that names it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from taskmill.models import TaskCreate
from taskmill.settings import Settings
from taskmill.tasktypes.command import CommandLimits, failure_reason
from tests.api.conftest import SECRET, app_client, bearer
from tests.helpers import new_task
from tests.processor.test_tasktypes import only_result, run_pipeline


def command(argv: list[str], **limits: int) -> dict[str, Any]:
    return {"argv": argv, "limits": limits}


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"memory_mb": 8}, "limits.memory_mb: Input should be greater than or equal to 16"),
        ({"cpu_seconds": 0}, "limits.cpu_seconds: Input should be greater than or equal to 1"),
        ({"file_mb": -1}, "limits.file_mb: Input should be greater than or equal to 0"),
        ({"cpu_seconds": "lots"}, "limits.cpu_seconds: Input should be a valid integer"),
        ({"stack_mb": 8}, "limits.stack_mb: Extra inputs are not permitted"),
    ],
)
def test_a_bad_limit_is_refused_at_creation_naming_it(limits: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TaskCreate(name="limited", type="command", payload={"argv": ["true"], "limits": limits})
    assert problem in str(caught.value)


async def test_the_api_answers_a_bad_limit_with_422_naming_the_field(settings: Settings) -> None:
    body = {"name": "limited", "type": "command", "payload": command(["true"], memory_mb=1)}
    async with app_client(settings.model_copy(update={"jwt_secret": SECRET})) as client:
        response = await client.post("/tasks", json=body, headers=bearer())
    assert response.status_code == 422, response.text
    assert "limits.memory_mb" in response.text
    assert "greater than or equal to 16" in response.text


async def test_a_memory_hog_fails_out_of_memory_under_its_memory_limit(
    settings: Settings, db: asyncpg.Connection
) -> None:
    hog = await new_task(db, "hog", "command", command([sys.executable, "-c", "b = bytearray(1 << 30)"], memory_mb=64))
    fits = await new_task(
        db, "fits", "command", command([sys.executable, "-c", "print(len(bytearray(1 << 20)))"], memory_mb=256)
    )
    await run_pipeline(settings, db, {"failed": 1, "succeeded": 1})
    row = await only_result(db, hog.id)
    assert row["error"] == "exit code 1: out of memory under the memory_mb limit 64"
    assert "MemoryError" in row["result"]["stderr"]
    assert (await only_result(db, fits.id))["result"]["stdout"] == "1048576\n"


async def test_a_cpu_spinner_is_killed_by_sigxcpu_at_its_cpu_limit(settings: Settings, db: asyncpg.Connection) -> None:
    task = await new_task(db, "spinner", "command", command(["sh", "-c", "while :; do :; done"], cpu_seconds=1))
    await run_pipeline(settings, db, {"failed": 1})
    row = await only_result(db, task.id)
    assert row["error"] == "killed by SIGXCPU: cpu_seconds limit 1 reached"
    assert row["result"]["exit_code"] == 128 + 24
    assert row["duration_ms"] >= 900


async def test_a_big_file_writer_is_stopped_by_sigxfsz_at_its_file_limit(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    argv = ["dd", "if=/dev/zero", f"of={big}", "bs=1M", "count=5"]
    task = await new_task(db, "writer", "command", command(argv, file_mb=1))
    await run_pipeline(settings, db, {"failed": 1})
    assert (await only_result(db, task.id))["error"] == "killed by SIGXFSZ: file_mb limit 1 reached"
    assert big.stat().st_size == 1024 * 1024


def test_failures_are_described_by_exit_code_or_by_signal_and_the_limit_behind_it() -> None:
    limits = CommandLimits(memory_mb=64, cpu_seconds=2, file_mb=1)
    assert failure_reason(3, "", None) == "exit code 3"
    assert failure_reason(1, "boom", limits) == "exit code 1"
    assert failure_reason(128 + 15, "", None) == "killed by SIGTERM"
    assert failure_reason(-24, "", limits) == "killed by SIGXCPU: cpu_seconds limit 2 reached"
    assert failure_reason(128 + 25, "", CommandLimits(memory_mb=64)) == "killed by SIGXFSZ"
    assert (
        failure_reason(128 + 11, "", limits) == "killed by SIGSEGV: likely out of memory under the memory_mb limit 64"
    )
    assert failure_reason(128 + 9, "", limits).startswith("killed by SIGKILL: SIGXCPU ignored past the cpu_seconds")
