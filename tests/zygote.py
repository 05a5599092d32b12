"""Role processes for the tests, forked from an interpreter that has already imported their role.

A role process spent most of the CPU a short test gives it importing (a median of 0.61 s a process; the imports alone
0.48 to 0.86 s by role here), and the suite starts several hundred of them on two cores. A zygote per role and pytest
worker imports `taskmill.cli` and that role's service once; each `taskmill <role>` the tests start is then a fork of it
that runs `python -m taskmill.cli <role>`'s code as that command would, with the test's arguments, environment, working
directory and standard streams. It is still a process of its own, killed, signalled and waited for for real; only the
imports are shared (memory figures stay those of one role: a zygote holds one role's modules). What differs is what the
kernel shows of it: its /proc environ and cmdline are the zygote's, so the jail's tests, which look there, exec their
processor (`exec_role_process`). `TASKMILL_TEST_EXEC=1` execs every role, as users start them; the CLI's own tests
always exec.

The zygote (`python -m tests.zygote FD`) takes requests on a SOCK_SEQPACKET socket, each a JSON message with the
standard streams' descriptors attached; it answers a request with the child's pid and, when the child ends, with its
exit code (`-N` for a signal, as asyncio says). It exits, killing its children, when the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
_MAX_MESSAGE = 1 << 20
_ROLES = {
    "scheduler": "scheduler.service",
    "distributor": "distributor.service",
    "processor": "processor.service",
    "api": "api.service",
    "capacity": "capacity.service",
}


def enabled() -> bool:
    return os.environ.get("TASKMILL_TEST_EXEC", "") != "1"


# --- the zygote -------------------------------------------------------------------------------------------------


def _serve(sock: socket.socket) -> dict[str, Any] | None:
    """Forks a child per request. Returns the request in the child; None in the zygote once the socket closes."""
    children: dict[int, int] = {}  # pid -> request id
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                sock.send(json.dumps({"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)}).encode())
        if sock.fileno() not in readable:
            continue
        message, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 3)
        if not message:  # the test process is gone: so are its roles
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            return None
        request: dict[str, Any] = json.loads(message)
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            sock.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in set(fds) - {0, 1, 2}:
                os.close(fd)
            return request
        for fd in fds:
            os.close(fd)
        children[pid] = request["id"]
        sock.send(json.dumps({"id": request["id"], "pid": pid}).encode())


def _main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    for module in ("taskmill.cli", *sys.argv[2:]):
        importlib.import_module(module)
    request = _serve(sock)
    if request is None:
        return
    # The child: what `python -m taskmill.cli ARGS` does, run to the interpreter's own end (atexit, threads joined).
    os.environ.clear()
    os.environ.update(request["env"])
    # What the interpreter read from the environment at its start, read again from this one.
    tempfile.tempdir = None  # TMPDIR
    time.tzset()  # TZ
    os.chdir(request["cwd"])
    # The path an interpreter started there with that environment would have: `-m` puts the working directory
    # first, PYTHONPATH's entries next.
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[0:1] = [request["cwd"], *extra]
    sys.argv = [str(REPO / "taskmill" / "cli.py"), *request["args"]]
    from taskmill.cli import main

    sys.exit(main())


# --- the tests' side --------------------------------------------------------------------------------------------


class _Zygote:
    """One zygote of this pytest worker, for one role; a thread reads its answers."""

    def __init__(self, modules: Sequence[str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote", str(theirs.fileno()), *modules],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd=REPO,
        )
        theirs.close()
        self._sock = ours
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._started: dict[int, tuple[threading.Event, list[int]]] = {}
        self.exits: dict[int, int] = {}
        self._on_exit: dict[int, list[Callable[[int], None]]] = {}
        threading.Thread(target=self._read, name="zygote-reader", daemon=True).start()

    def _read(self) -> None:
        while message := self._sock.recv(_MAX_MESSAGE):
            answer = json.loads(message)
            with self._lock:
                if "pid" in answer:
                    event, pid = self._started.pop(answer["id"])
                    pid.append(answer["pid"])
                    event.set()
                    continue
                self.exits[answer["id"]] = answer["exit"]
                callbacks = self._on_exit.pop(answer["id"], [])
            for callback in callbacks:
                callback(answer["exit"])

    def spawn(self, args: Sequence[str], env: Mapping[str, str], cwd: Path, fds: Sequence[int]) -> tuple[int, int]:
        """(request id, pid) of a new role process; blocks until the zygote has forked it."""
        event, pid = threading.Event(), list[int]()
        with self._lock:
            key = next(self._ids)
            self._started[key] = (event, pid)
        request = {"id": key, "args": list(args), "env": dict(env), "cwd": str(cwd)}
        socket.send_fds(self._sock, [json.dumps(request).encode()], list(fds))
        if not event.wait(120):
            raise RuntimeError(f"the test zygote did not fork `taskmill {' '.join(args)}` (exit {self._proc.poll()})")
        return key, pid[0]

    def when_exited(self, key: int, callback: Callable[[int], None]) -> None:
        with self._lock:
            code = self.exits.get(key)
            if code is None:
                self._on_exit.setdefault(key, []).append(callback)
                return
        callback(code)


_zygotes: dict[str, _Zygote] = {}
_zygotes_lock = threading.Lock()


def _zygote(args: Sequence[str]) -> _Zygote:
    role = args[0] if args and args[0] in _ROLES else ""
    with _zygotes_lock:
        if role not in _zygotes:
            _zygotes[role] = _Zygote([_ROLES[role]] if role else [])
        return _zygotes[role]


class ForkedProcess(asyncio.subprocess.Process):
    """What asyncio's Process offers the tests, for a role process forked by a zygote."""

    def __init__(
        self,
        zygote: _Zygote,
        key: int,
        pid: int,
        stdout: asyncio.StreamReader | None,
        stderr: asyncio.StreamReader | None,
    ) -> None:
        self._zygote = zygote
        self._key = key
        self.pid = pid
        self.stdin = None
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"<ForkedProcess {self.pid}>"

    @property
    def returncode(self) -> int | None:
        return self._zygote.exits.get(self._key)

    async def wait(self) -> int:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[int] = loop.create_future()

        def settle(code: int) -> None:
            if not ended.done():
                ended.set_result(code)

        def from_reader(code: int) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, code)

        self._zygote.when_exited(self._key, from_reader)
        return await ended

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # not reaped yet, so the pid is still this process's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def communicate(self, input: bytes | bytearray | memoryview | None = None) -> tuple[bytes, bytes]:
        # asyncio's says (bytes, bytes) too, and gives None for a stream that is not a pipe.
        if input is not None:
            raise ValueError("a forked role reads no stdin: start it with stdin as a pipe by exec (fork=False)")

        async def drained(stream: asyncio.StreamReader | None) -> bytes:
            return None if stream is None else await stream.read()  # type: ignore[return-value]

        out, err = await asyncio.gather(drained(self.stdout), drained(self.stderr))
        await self.wait()
        return out, err


async def _reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0))
    return reader


Stream = int | IO[Any] | None


async def start(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: Stream = subprocess.DEVNULL,
    stdout: Stream = None,
    stderr: Stream = None,
    cwd: Path | None = None,
    fork: bool = True,
) -> asyncio.subprocess.Process:
    """`taskmill ARGS` as a new process, forked by a zygote (or exec'd under TASKMILL_TEST_EXEC=1). Streams as
    asyncio's: PIPE, DEVNULL, STDOUT (stderr only), a file, or None (this process's). `fork=False` execs it."""
    if not (fork and enabled()):
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "taskmill.cli",
            *args,
            env=dict(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
        )
    opened: list[int] = []  # ours to close once the child has its copies
    readers: list[int | None] = [None, None]

    def descriptor(stream: Stream, index: int) -> int:
        if stream is None:
            return index
        if stream == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            opened.append(fd)
            return fd
        if stream == subprocess.PIPE:
            if index == 0:
                raise ValueError("a forked role takes no stdin pipe: start it by exec (fork=False)")
            r, w = os.pipe()
            readers[index - 1] = r
            opened.append(w)
            return w
        if isinstance(stream, int):
            return stream
        return stream.fileno()

    fds = [descriptor(stdin, 0), descriptor(stdout, 1)]
    fds.append(fds[1] if stderr == subprocess.STDOUT else descriptor(stderr, 2))
    zygote = _zygote(args)
    try:
        key, pid = await asyncio.get_running_loop().run_in_executor(
            None, zygote.spawn, args, env, cwd or Path.cwd(), fds
        )
    finally:
        for fd in opened:
            os.close(fd)
    out, err = [None if fd is None else await _reader(fd) for fd in readers]
    return ForkedProcess(zygote, key, pid, out, err)


if __name__ == "__main__":
    _main()
