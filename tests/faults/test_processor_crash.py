"""A processor that dies or is told to stop: its runs are finished, handed on, and leave no process behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from distributor.service import run as distributor_run
from processor.service import run as processor_run
from taskmill.settings import Settings
from tests.helpers import new_task, running, start_role_process, wait_for_statuses, wait_until

Process = asyncio.subprocess.Process


def _worker_of(proc: Process) -> str:
    # The processor names itself host:pid (processor.service.worker_name); the subprocess is python itself.
    return f"{socket.gethostname()}:{proc.pid}"


@asynccontextmanager
async def _processor_process(settings: Settings, *args: str) -> AsyncIterator[Process]:
    """A `taskmill processor` subprocess, killed and reaped whatever happens in the block."""
    proc = await start_role_process(settings, "processor", *args)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.communicate()  # reaps it and closes its pipes


async def _stderr_of(proc: Process) -> str:
    """What a finished subprocess wrote to stderr (for failure messages)."""
    _, err = await proc.communicate()
    return err.decode(errors="replace")[-4000:]


def _proc_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return "?"


def _live_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


async def _wait_running(db: asyncpg.Connection, worker: str, count: int, proc: Process) -> None:
    async def check() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"processor exited with {proc.returncode}:\n{await _stderr_of(proc)}")
        n: int = await db.fetchval(
            "SELECT count(*) FROM task_schedule WHERE status = 'running' AND worker = $1", worker
        )
        return n == count

    await wait_until(check, timeout=15, what=f"{count} runs running on {worker}")


async def _pids_in(pidfile: Path, count: int) -> list[int]:
    async def check() -> bool:
        return pidfile.exists() and len(pidfile.read_text().split()) >= count

    await wait_until(check, timeout=5, what=f"{count} pids in {pidfile}")
    return [int(p) for p in pidfile.read_text().split()]


@pytest.mark.slow
async def test_a_run_on_a_killed_processor_is_rescued_and_succeeds_on_its_second_attempt(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    # max_retries=1: the lost attempt counts as one, so the rescuer queues the second instead of going dead.
    task = await new_task(
        db,
        "crash",
        "command",
        {"argv": ["sh", "-c", f"echo $$ >> {shlex.quote(str(pidfile))}; sleep 3"]},
        timeout_seconds=5,
        max_retries=1,
    )
    await distributor_run(settings, until_idle=True)  # publishes the run, nothing more
    async with _processor_process(settings, "--concurrency", "4") as first:
        lost_worker = _worker_of(first)
        await _wait_running(db, lost_worker, 1, first)
        [command_pid] = await _pids_in(pidfile, 1)
        assert _alive(command_pid)

        os.kill(first.pid, signal.SIGKILL)
        assert await asyncio.wait_for(first.wait(), 5) == -signal.SIGKILL

    async def command_gone() -> bool:
        return not _alive(command_pid)

    await wait_until(command_gone, timeout=2, what=f"the first attempt's command (pid {command_pid}) to die")
    run = await db.fetchrow("SELECT id, status::text, attempt, worker FROM task_schedule WHERE task_id = $1", task.id)
    assert run is not None
    assert (run["status"], run["attempt"], run["worker"]) == ("running", 1, lost_worker)

    async with running(processor_run, settings), running(distributor_run, settings):
        # The lease runs out timeout + grace = 6 s after the start; the second attempt then takes 3 s.
        await wait_for_statuses(db, {"succeeded": 1}, timeout=20)

    row = await db.fetchrow("SELECT status::text, attempt, worker, error FROM task_schedule WHERE id = $1", run["id"])
    assert row is not None
    assert (row["status"], row["attempt"], row["error"]) == ("succeeded", 2, None)
    assert row["worker"] not in (None, lost_worker)
    results = await db.fetch(
        "SELECT attempt, status::text, worker, error FROM task_results WHERE run_id = $1 ORDER BY attempt", run["id"]
    )
    assert [tuple(r) for r in results] == [
        (1, "failed", lost_worker, "processor lost during the attempt"),
        (2, "succeeded", row["worker"], None),
    ]
    pids = await _pids_in(pidfile, 2)
    assert len(pids) == 2 and pids[1] != command_pid  # the second attempt ran the command afresh
    assert not _alive(command_pid)


async def test_a_killed_processor_takes_its_commands_whole_process_group_with_it(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    # The shell is the processor's child; `sleep` is the shell's child, in the same process group.
    await new_task(
        db,
        "orphan",
        "command",
        {"argv": ["sh", "-c", f"echo $$ >> {shlex.quote(str(pidfile))}; sleep 20"]},
        timeout_seconds=25,
    )
    await distributor_run(settings, until_idle=True)
    pgid: int | None = None
    try:
        async with _processor_process(settings) as proc:
            await _wait_running(db, _worker_of(proc), 1, proc)
            [shell] = await _pids_in(pidfile, 1)
            pgid = os.getpgid(shell)
            assert pgid != os.getpgid(proc.pid)  # the command runs in a process group of its own
            assert len(_live_members(pgid)) >= 2, "expected the shell and its sleep"
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 5)

        deadline = time.monotonic() + 2
        while (left := _live_members(pgid)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        described = {pid: _cmdline(pid) for pid in left}
        assert not left, f"command processes outlived the killed processor by 2 s: {described}"
    finally:
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


async def test_sigterm_lets_a_processor_finish_its_runs_in_flight_and_exit_cleanly(
    settings: Settings, db: asyncpg.Connection
) -> None:
    in_flight = 4
    for i in range(in_flight):
        await new_task(db, f"sleepy-{i}", "sleep", {"ms": 1500})
    await distributor_run(settings, until_idle=True)
    async with _processor_process(settings, "--concurrency", str(in_flight)) as proc:
        worker = _worker_of(proc)
        await _wait_running(db, worker, in_flight, proc)

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            raise AssertionError("the processor was still running 5 s after SIGTERM") from None
        took = time.monotonic() - sent
        err = await _stderr_of(proc)
        assert code == 0, f"exit code {code}:\n{err}"
        assert "Traceback" not in err, err

    rows = await db.fetch("SELECT status::text, attempt, worker FROM task_schedule ORDER BY id")
    assert [tuple(r) for r in rows] == [("succeeded", 1, worker)] * in_flight, f"after {took:.2f} s"
    results = await db.fetch("SELECT attempt, status::text, worker FROM task_results ORDER BY run_id")
    assert [tuple(r) for r in results] == [(1, "succeeded", worker)] * in_flight


@pytest.mark.slow
async def test_a_run_in_flight_when_the_broker_connection_drops_finishes_and_is_recorded_once(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await new_task(db, "through-the-drop", "sleep", {"ms": 1500})
    await distributor_run(settings, until_idle=True)
    async with running(processor_run, settings):

        async def started() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'running'"))

        await wait_until(started, 10, what="the run to start")
        closed = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "close_all_connections",
            "test: connection drop",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await closed.wait() == 0

        async def finished() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'succeeded'"))

        await wait_until(finished, 15, what="the run to finish")
        # The redelivery after the reconnect finds the run finished: it is dropped, not run again.
        await asyncio.sleep(6)
    row = await db.fetchrow("SELECT status::text, attempt FROM task_schedule")
    assert row is not None and tuple(row) == ("succeeded", 1)
    assert await db.fetchval("SELECT count(*) FROM task_results") == 1
