"""The forkserver: a small process the processor starts once (`python -c ...main(fd)`), that imports taskmill and
then forks a worker process each time the processor asks, and tells it when one has exited.

Forking the processor itself is not safe (an event loop and threads mid-flight), and a fresh interpreter per worker
takes most of a second and ~50 MB of its own. This process has one thread and nothing in flight: a fork of it is a
worker in milliseconds, sharing the pages of taskmill with its siblings (each then imports the handlers' modules).

Over its socket to the processor:
    processor -> forker   a frame of JSON: {"sys_path": [...], "imports": [...], "log_level": ..., "log_format": ...}
                          then per worker, one byte carrying the worker's end of its own socket (SCM_RIGHTS)
    forker -> processor   {"ready": <pid>}; per worker {"forked": <pid>} or {"cannot": "<why>"}; and
                          {"exit": <pid>, "code": <exit code, a signal as its negative number>} once reaped
It exits when the processor's end closes (the processor exited or was killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from types import FrameType

from taskmill.workerpool import child, wire  # taskmill, imported once for every worker


def main(fd: int) -> None:
    control = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the processor's: it finishes what runs, then goes
    first = wire.receive(control)
    if first is None:
        return
    given = json.loads(first)
    sys.path[:] = given["sys_path"]  # as the processor's: the handlers' modules are found where it found them
    setup = child.Setup(tuple(given["imports"]), given["log_level"], given["log_format"])
    woken, wake = os.pipe()
    os.set_blocking(woken, False)
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, _ignore)  # a handler, so that SIGCHLD reaches the wakeup pipe

    def send(reply: dict[str, object]) -> None:
        control.sendall(wire.answer(reply))

    send({"ready": os.getpid()})
    with contextlib.suppress(OSError):  # the processor is gone
        _serve(control, setup, woken, wake, send)


def _serve(
    control: socket.socket, setup: child.Setup, woken: int, wake: int, send: Callable[[dict[str, object]], None]
) -> None:
    """Forks a worker per request, and reports the workers that exited, until the processor's end closes."""
    with selectors.DefaultSelector() as selector:
        selector.register(control, selectors.EVENT_READ)
        selector.register(woken, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is woken:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(woken, 512):
                            pass
                    for pid, code in _reaped():
                        send({"exit": pid, "code": code})
                    continue
                data, fds, _, _ = socket.recv_fds(control, 1, 1)
                if not data:
                    return  # the processor is gone
                if not fds:
                    continue
                try:
                    pid = os.fork()
                except OSError as exc:
                    os.close(fds[0])
                    send({"cannot": f"fork: {exc}"})
                    continue
                if pid == 0:
                    _become_worker(fds[0], setup, [control.fileno(), woken, wake], selector)
                os.close(fds[0])
                send({"forked": pid})


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _reaped() -> list[tuple[int, int]]:
    """The children that have exited since last asked, with their exit codes."""
    found: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        found.append((pid, os.waitstatus_to_exitcode(status)))


def _become_worker(fd: int, setup: child.Setup, close: list[int], selector: selectors.BaseSelector) -> None:
    """In the forked child: none of the forkserver's, then the worker's life (taskmill/workerpool/child.py)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        selector.close()
        for other in close:
            os.close(other)
        child.main(socket.socket(fileno=fd), setup)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
