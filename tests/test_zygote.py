"""The tests' role processes forked from a zygote (tests/zygote.py) behave as the exec'd `taskmill <role>` would:
arguments, environment, working directory, import path, standard streams, exit codes and signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from taskmill.settings import Settings
from tests import zygote
from tests.helpers import role_env, wait_until

PROBE = """
import json, os, sys, tempfile, time
print("to stdout", flush=True)
print("to stderr", file=sys.stderr, flush=True)
with open(os.environ["PROBE_OUT"], "w") as out:
    json.dump({"cwd": os.getcwd(), "argv": sys.argv, "mark": os.environ.get("PROBE_MARK"), "path": sys.path,
               "tmp": tempfile.gettempdir(), "tz": time.tzname,
               "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("taskmill", "processor"))}, out)
if os.environ.get("PROBE_HANG"):
    import time
    time.sleep(60)
os._exit(int(os.environ["PROBE_EXIT"]))
"""


@pytest.fixture(params=["fork", "exec"])
def fork(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "fork")


def _probe(tmp_path: Path, settings: Settings, **env: str) -> tuple[Path, dict[str, str]]:
    """A module `--import probe` runs in the processor before it connects anywhere: it reports what it sees."""
    (tmp_path / "probe.py").write_text(PROBE)
    out = tmp_path / "seen.json"
    return out, role_env(settings, PROBE_OUT=str(out), PROBE_MARK="m-1", PROBE_EXIT="7", **env)


async def test_a_forked_role_sees_what_the_exec_d_one_sees_and_exits_with_its_code(
    settings: Settings, tmp_path: Path
) -> None:
    """Arguments, environment (TMPDIR and TZ, which the interpreter reads at its start, included), working
    directory, import path (PYTHONPATH's entries included), the project's modules loaded when its code runs,
    standard streams and exit code: the same both ways."""
    seen = {}
    for fork in (True, False):
        out, env = _probe(tmp_path, settings, PYTHONPATH=str(tmp_path / "lib"), TMPDIR=str(tmp_path), TZ="Asia/Kolkata")
        proc = await zygote.start(
            ["processor", "--import", "probe"],
            env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            fork=fork,
        )
        assert isinstance(proc, zygote.ForkedProcess) == fork
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 7, stderr
        assert (stdout, stderr) == (b"to stdout\n", b"to stderr\n")
        seen[fork] = json.loads(out.read_text())
    forked, execd = seen[True], seen[False]
    # The same modules, but for the CLI's: the exec'd command runs it as __main__.
    assert set(forked.pop("modules")) ^ set(execd.pop("modules")) == {"taskmill.cli"}
    assert forked == execd
    assert seen[True]["cwd"] == str(tmp_path)
    assert seen[True]["argv"][1:] == ["processor", "--import", "probe"]
    assert seen[True]["mark"] == "m-1"
    assert str(tmp_path / "lib") in seen[True]["path"]
    assert (seen[True]["tmp"], seen[True]["tz"]) == (str(tmp_path), ["IST", "IST"])


async def test_output_goes_to_a_file_with_stderr_merged(settings: Settings, tmp_path: Path, fork: bool) -> None:
    _, env = _probe(tmp_path, settings)
    log = tmp_path / "role.log"
    with log.open("wb") as file:
        proc = await zygote.start(
            ["processor", "--import", "probe"], env, stdout=file, stderr=subprocess.STDOUT, cwd=tmp_path, fork=fork
        )
    assert await asyncio.wait_for(proc.wait(), 30) == 7
    assert log.read_bytes() == b"to stdout\nto stderr\n"


async def test_a_killed_role_reports_the_signal_as_asyncio_does(settings: Settings, tmp_path: Path, fork: bool) -> None:
    out, env = _probe(tmp_path, settings, PROBE_HANG="1")
    proc = await zygote.start(["processor", "--import", "probe"], env, cwd=tmp_path, fork=fork)

    async def probed() -> bool:
        return out.exists() and out.stat().st_size > 0

    await wait_until(probed, 30, what="the probe to run")
    assert proc.returncode is None
    proc.kill()
    assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


async def test_a_bad_setting_is_refused_as_by_the_exec_d_command(settings: Settings, fork: bool) -> None:
    env = role_env(settings, TASKMILL_CONCURRENCY="lots")
    proc = await zygote.start(["processor"], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, fork=fork)
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"TASKMILL_CONCURRENCY" in stderr, stderr
