"""Install steps of command tasks (taskmill/tasktypes/install.py, SPEC P9): built once per host per content, reused,
built once when two runs need it at once, a failure reported as the run's, the least recently used evicted."""

from __future__ import annotations

import zipfile
from pathlib import Path

import asyncpg
import pytest

from taskmill.settings import Settings
from tests.helpers import new_task
from tests.processor.test_tasktypes import only_result, run_pipeline

# Writes an executable `bin/mytool` into the install directory, noting each build (and taking a moment).
MAKE_TOOL = (
    "mkdir -p bin && printf '#!/bin/sh\\necho tool-ok\\n' > bin/mytool && chmod +x bin/mytool"
    " && echo built >> {log} && sleep 0.3"
)


@pytest.fixture
def cached(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"cache_dir": str(tmp_path / "cache"), "concurrency": 4})


def _envs(settings: Settings) -> list[Path]:
    return sorted(p for p in (Path(settings.cache_dir) / "envs").iterdir() if p.is_dir())


async def test_an_install_step_is_built_once_for_runs_at_once_and_its_bin_is_on_the_path(
    cached: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    log = tmp_path / "builds.log"
    payload = {"argv": ["mytool"], "install": [["sh", "-c", MAKE_TOOL.format(log=log)]]}
    tasks = [await new_task(db, f"tool-{i}", "command", payload) for i in range(3)]
    await run_pipeline(cached, db, {"succeeded": 3})
    for task in tasks:
        assert (await only_result(db, task.id))["result"]["stdout"] == "tool-ok\n"
    assert log.read_text() == "built\n"  # three runs at once, one build
    [env] = _envs(cached)
    assert (env / ".ready").exists() and (env / "bin" / "mytool").exists()

    again = await new_task(db, "tool-later", "command", payload)
    await run_pipeline(cached, db, {"succeeded": 4})
    assert (await only_result(db, again.id))["result"]["stdout"] == "tool-ok\n"
    assert log.read_text() == "built\n"  # reused


async def test_a_failed_install_fails_the_run_with_the_step_and_leaves_nothing_half_built(
    cached: Settings, db: asyncpg.Connection
) -> None:
    payload = {"argv": ["true"], "install": [["true"], ["sh", "-c", "echo no space left >&2; exit 4"]]}
    task = await new_task(db, "broken", "command", payload)
    await run_pipeline(cached, db, {"failed": 1})
    row = await only_result(db, task.id)
    assert row["run_error"] == "install step sh -c echo no space left >&2; exit 4 exit 4: no space left"
    assert _envs(cached) == []


def one_module_wheel(directory: Path) -> Path:
    """A wheel of one module, made by hand (no build backend, no index needed), readable by every user (a jailed
    run's uid reads it too: tests/processor/test_jail_runs.py)."""
    path = directory / "tmwheel-1.0-py3-none-any.whl"
    info = "tmwheel-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("tmwheel.py", "VALUE = 'from the wheel'\n")
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tmwheel\nVersion: 1.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    path.chmod(0o644)
    return path


@pytest.mark.slow
async def test_requirements_are_installed_in_a_virtualenv_the_command_runs_with(
    cached: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # Offline: the requirement is a wheel on disk, and no index is asked.
    requirements = ["--no-index", str(one_module_wheel(tmp_path))]
    payload = {"argv": ["python", "-c", "import sys, tmwheel; print(tmwheel.VALUE, sys.prefix)"],
               "requirements": requirements}  # fmt: skip
    task = await new_task(db, "venv", "command", payload, timeout_seconds=30)
    slow = cached.model_copy(update={"max_timeout_s": 60})
    # A virtualenv with pip takes 4 s on an idle 2-core machine, and more than 10 s beside three other workers.
    await run_pipeline(slow, db, {"succeeded": 1}, timeout=50)
    [env] = _envs(cached)
    assert (await only_result(db, task.id))["result"]["stdout"] == f"from the wheel {env}\n"


async def test_past_the_size_limit_the_least_recently_used_environment_goes(
    cached: Settings, db: asyncpg.Connection
) -> None:
    small = cached.model_copy(update={"install_cache_mb": 1})
    fill = "head -c 700000 /dev/zero > blob"
    await new_task(db, "a", "command", {"argv": ["true"], "install": [["sh", "-c", fill + " # a"]]})
    await run_pipeline(small, db, {"succeeded": 1})
    [kept] = _envs(small)
    await new_task(db, "b", "command", {"argv": ["true"], "install": [["sh", "-c", fill + " # b"]]})
    await run_pipeline(small, db, {"succeeded": 2})
    [newest] = _envs(small)
    assert newest != kept  # the first one (700 KB) went: the two did not fit in 1 MB
