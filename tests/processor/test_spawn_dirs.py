"""The directories of spawn files (a command's TASKMILL_SPAWN_FILE when it runs unconfined) are named by the host
and pid of their processor, and a processor that starts removes those a killed one left."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import pytest

from taskmill.settings import Settings
from taskmill.tasktypes.command import _spawn_file, sweep_spawn_dirs
from tests.helpers import start_role_process, stop_process, wait_until


def _gone_pid() -> int:
    """A pid no process has now (a child that ended and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_spawn_file_lies_in_a_directory_named_by_its_processor_and_goes_with_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with _spawn_file(None) as path:
        assert path.exists()
        assert path.parent.parent == tmp_path
        assert path.parent.name.startswith(f"taskmill-spawn-{socket.gethostname()}.{os.getpid()}.")
    assert not path.parent.exists()


def test_the_sweep_removes_only_what_processors_of_this_host_that_are_gone_left(tmp_path: Path) -> None:
    host = socket.gethostname()
    gone = _gone_pid()
    left = tmp_path / f"taskmill-spawn-{host}.{gone}.abc123"
    alive = tmp_path / f"taskmill-spawn-{host}.{os.getpid()}.def456"
    elsewhere = tmp_path / f"taskmill-spawn-other-host.example.{gone}.ghi789"
    old_style = tmp_path / "taskmill-spawn-jkl012"
    for directory in (left, alive, elsewhere, old_style):
        directory.mkdir()
        (directory / "spawn.jsonl").touch()
    assert sweep_spawn_dirs(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (alive, elsewhere, old_style))


async def test_a_processor_that_starts_removes_the_spawn_directories_a_killed_one_left(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    left = tmp_path / f"taskmill-spawn-{socket.gethostname()}.{_gone_pid()}.abc123"
    left.mkdir()
    (left / "spawn.jsonl").write_text('{"type": "noop"}\n')
    proc = await start_role_process(settings, "processor", TMPDIR=str(tmp_path))
    try:

        async def removed() -> bool:
            assert proc.returncode is None, await proc.communicate()
            return not left.exists()

        await wait_until(removed, 30, what="the processor to remove the spawn directory")
    finally:
        await stop_process(proc)
