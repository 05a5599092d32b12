"""Install steps of command tasks (SPEC P9, seed 002): what a command needs, prepared once per host.

A command task may declare `requirements` (pip requirement lines: a virtualenv is made and they are installed in
it) and `install` (argvs run in that directory, which they may fill: `bin/` comes first on the command's PATH).
Both are keyed by a hash of their content: the directory `<cache>/envs/<hash>` is built once, under an exclusive
lock (two runs that need it at once: one builds, the other waits and reuses it), marked ready, and reused by every
later run, which holds a shared lock on it while it runs. Past `TASKMILL_INSTALL_CACHE_MB` the least recently used
directories that no run holds are removed.

The steps run as the command does: in its jail and as its user, the directory their only writable place.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskmill.tasktypes.base import stderr_tail

READY = ".ready"  # made last: a directory without it is a build that did not finish
USED = ".last_used"  # touched by every run that uses it: the eviction's order

# Runs one install step (argv) with `cwd` and the environment's PATH; returns (exit code, stderr).
Step = Callable[[list[str], Path], Awaitable[tuple[int, str]]]


class InstallFailed(Exception):
    """A step exited non-zero (the message names it, its exit and the end of its stderr)."""


@dataclass(frozen=True, slots=True)
class Needs:
    requirements: tuple[str, ...] = ()
    install: tuple[tuple[str, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.requirements or self.install)

    def key(self) -> str:
        content = json.dumps({"v": 1, "requirements": self.requirements, "install": self.install})
        return hashlib.sha256(content.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class InstallCache:
    root: Path
    max_bytes: int

    @contextlib.asynccontextmanager
    async def prepared(self, needs: Needs, step: Step, owner: tuple[int, int] | None = None) -> AsyncIterator[Path]:
        """The environment directory for `needs`, built if missing, held (shared lock) for the body of the block."""
        envs = self.root / "envs"
        await asyncio.to_thread(envs.mkdir, parents=True, exist_ok=True)
        directory = envs / needs.key()
        lock = await asyncio.to_thread(_open_lock, envs / f"{needs.key()}.lock")
        try:
            if not (directory / READY).exists():
                await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
                try:
                    if not (directory / READY).exists():
                        await self._build(directory, needs, step, owner)
                        await asyncio.to_thread(self._evict, keep=directory)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_SH)
            (directory / USED).touch()
            yield directory
        finally:
            os.close(lock)  # releases the lock

    async def _build(self, directory: Path, needs: Needs, step: Step, owner: tuple[int, int] | None) -> None:
        """Runs the steps in `directory` (owned by `owner`, the user they run as, when the processor is root)."""
        await asyncio.to_thread(shutil.rmtree, directory, True)  # what a build that died left
        directory.mkdir(mode=0o755)
        if owner is not None:
            os.chown(directory, *owner)
        steps: list[list[str]] = []
        if needs.requirements:
            (directory / "requirements.txt").write_text("".join(line + "\n" for line in needs.requirements))
            steps += [["python3", "-m", "venv", str(directory)],
                      [str(directory / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-input",
                       "-r", str(directory / "requirements.txt")]]  # fmt: skip
        steps += [list(argv) for argv in needs.install]
        try:
            for argv in steps:
                code, stderr = await step(argv, directory)
                if code != 0:
                    raise InstallFailed(f"install step {' '.join(argv)} exit {code}: {stderr_tail(stderr)}")
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise
        (directory / READY).touch()

    def _evict(self, keep: Path) -> None:
        """Removes the least recently used environments no run holds until the cache fits its size."""
        envs = sorted(
            (d for d in (self.root / "envs").iterdir() if d.is_dir() and d != keep),
            key=lambda d: _mtime(d / USED),
        )
        total = sum(_size(d) for d in [*envs, keep])
        for directory in envs:
            if total <= self.max_bytes:
                return
            lock = _open_lock(directory.with_name(f"{directory.name}.lock"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a run holds it
            else:
                size = _size(directory)
                shutil.rmtree(directory, ignore_errors=True)
                total -= size
            finally:
                os.close(lock)


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(directory: Path) -> int:
    total = 0
    for base, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_size
    return total


def default_root(euid: int, environ: Mapping[str, str]) -> Path:
    """/var/cache/taskmill for root, else `$XDG_CACHE_HOME/taskmill` (~/.cache/taskmill)."""
    if euid == 0:
        return Path("/var/cache/taskmill")
    cache = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):
        cache = str(Path.home() / ".cache")
    return Path(cache) / "taskmill"


def needs_of(requirements: Sequence[str], install: Sequence[Sequence[str]]) -> Needs:
    return Needs(tuple(requirements), tuple(tuple(argv) for argv in install))
