"""`command`: runs an executable (argv, no shell) in its own process group, output captured up to a cap.

`checks` run first, each of which must exit 0 (else the run fails naming it), then `run_if` (non-zero: the run is
skipped, with the reason), then the command; all of them within the run's one timeout, in the same jail and as the
same user (one uid of the range held for the whole run).

Optional `limits` are set with setrlimit in the child before exec, so they bind the command and whatever it starts
(each process on its own: RLIMIT_CPU and RLIMIT_AS count per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from taskmill.procs import alive
from taskmill.tasktypes.base import (
    JsonObject,
    RunContext,
    TaskFailed,
    TaskSkipped,
    TaskType,
    cap_text,
    stderr_tail,
)
from taskmill.tasktypes.install import InstallFailed, needs_of
from taskmill.tasktypes.jail import SPAWN_FILE, Jail, JailBusy, JailRefused, RunAs
from taskmill.tasktypes.view import overlaps

if TYPE_CHECKING:
    from taskmill.spawn import Flow

_PR_SET_PDEATHSIG = 1
# How long output may keep flowing after the command exits, from processes it left behind.
_DRAIN_S = 0.5
# What a command inherits from the processor; everything else it gets from its payload's env.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
# Bytes of a spawn file read at most, and one more to tell a file past the limit (taskmill/spawn.py).
_SPAWN_READ = 4 * 1024 * 1024 + 1


class CommandLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Address space (RLIMIT_AS): an allocation past it fails. Below 16 MB not even the guard shell starts.
    memory_mb: int | None = Field(None, ge=16, le=1024 * 1024)
    # CPU time (RLIMIT_CPU): SIGXCPU at the limit, SIGKILL one second later if that is ignored.
    cpu_seconds: int | None = Field(None, ge=1, le=86_400)
    # Largest file it may write (RLIMIT_FSIZE): SIGXFSZ past it. 0 forbids writing to files at all.
    file_mb: int | None = Field(None, ge=0, le=1024 * 1024)

    def rlimits(self) -> list[tuple[int, int, int]]:
        """(resource, soft, hard) for each limit set, never above the processor's own hard limit (which the child
        could not raise: setrlimit would fail in the child, with no clear reason)."""
        mb = 1024 * 1024
        wanted = [
            (resource.RLIMIT_AS, None if self.memory_mb is None else self.memory_mb * mb, 0),
            (resource.RLIMIT_CPU, self.cpu_seconds, 1),
            (resource.RLIMIT_FSIZE, None if self.file_mb is None else self.file_mb * mb, 0),
        ]
        out = []
        for which, soft, slack in wanted:
            if soft is None:
                continue
            _, ceiling = resource.getrlimit(which)
            hard = soft + slack if ceiling == resource.RLIM_INFINITY else min(soft + slack, ceiling)
            out.append((which, min(soft, hard), hard))
        return out


class CommandPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    expected_exit_codes: list[int] = Field(default_factory=lambda: [0], min_length=1)
    limits: CommandLimits | None = None
    # Another user to run as than the processor's default, from its TASKMILL_COMMAND_USERS.
    user: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    # False: no network at all (its own empty network namespace), whatever TASKMILL_COMMAND_NETWORK allows.
    network: bool = True
    # Commands that must each exit 0 before the run (else it fails, naming the check); run as the command is.
    checks: list[list[str]] = Field(default_factory=list, max_length=20)
    # A command run first: exit 0 runs the command, anything else marks the run skipped with the reason.
    run_if: list[str] | None = None
    # What it needs installed, once per host (taskmill/tasktypes/install.py): pip requirement lines for a
    # virtualenv of its own, and argvs run in that directory; its bin/ comes first on the command's PATH.
    requirements: list[str] = Field(default_factory=list, max_length=200)
    install: list[list[str]] = Field(default_factory=list, max_length=20)

    @field_validator("requirements")
    @classmethod
    def _requirement_lines(cls, lines: list[str]) -> list[str]:
        for i, line in enumerate(lines, 1):
            if not line.strip() or any(c in line for c in "\0\r\n"):
                raise ValueError(f"requirement {i} must be one non-empty line")
        return lines

    @field_validator("checks", "install")
    @classmethod
    def _argvs(cls, argvs: list[list[str]], info: ValidationInfo) -> list[list[str]]:
        what = "check" if info.field_name == "checks" else "install step"
        for i, argv in enumerate(argvs, 1):
            if not argv or any("\0" in arg for arg in argv):
                raise ValueError(f"{what} {i} must be a non-empty argv without NUL characters")
        return argvs

    @field_validator("run_if")
    @classmethod
    def _run_if_is_a_command(cls, run_if: list[str] | None) -> list[str] | None:
        if run_if is not None and (not run_if or any("\0" in arg for arg in run_if)):
            raise ValueError("must be a non-empty argv without NUL characters")
        return run_if

    @field_validator("argv")
    @classmethod
    def _argv_without_nul(cls, argv: list[str]) -> list[str]:
        if any("\0" in arg for arg in argv):
            raise ValueError("an argument cannot contain a NUL character")
        return argv

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        # exec() would take "A=B" as the name A with a value starting B=..., and a NUL ends the string early.
        for name, value in env.items():
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"environment variable name {name!r} must be non-empty, without '=' or NUL")
            if "\0" in value:
                raise ValueError(f"environment variable {name!r} cannot contain a NUL character")
        return env


# The command runs under a small shell that leads its process group. When the processor dies, even by SIGKILL,
# the kernel sends that shell SIGTERM (PR_SET_PDEATHSIG) and it kills the whole group, grandchildren included,
# instead of leaving them to run on beside the attempt the rescuer starts elsewhere.
# In the jail, its first two arguments are a descriptor and the spawn file (else empty): the file is made empty
# first, and once the command is done its first bytes go to the descriptor, a pipe the processor reads (the file
# lives in the jail's own bounded tmpfs, gone with it). dash takes no descriptor past 9 in a redirection: the pipe is
# opened again through /proc.
_GUARD = f"""trap "kill -KILL 0" TERM HUP
out=$1 file=$2
shift 2
[ -z "$file" ] || : > "$file"
"$@" & wait $!
code=$?
[ -z "$out" ] || head -c {_SPAWN_READ} -- "$file" 2>/dev/null > "/proc/self/fd/$out"
exit $code"""


def _prepare_child(rlimits: list[tuple[int, int, int]], run_as: RunAs | None) -> None:
    """In the child, before exec: take the task's limits, become its user (a root processor with no isolation;
    uvloop's subprocesses take no `user=`), then die with the processor (last: a change of user clears that)."""
    for which, soft, hard in rlimits:
        resource.setrlimit(which, (soft, hard))
    if run_as is not None:
        os.setgroups([])
        os.setgid(run_as.gid)
        os.setuid(run_as.uid)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# What a limit's breach looks like: a signal named for it, or (memory) an allocation failure the program reports.
_LIMIT_SIGNALS = {signal.SIGXCPU: "cpu_seconds", signal.SIGXFSZ: "file_mb"}
_OUT_OF_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|out of memory|bad_alloc|memory exhausted", re.I)
# A write to the jail's full /tmp: ENOSPC as programs print it (dash's builtins say only "I/O error").
_NO_SPACE = re.compile(r"No space left on device|ENOSPC|Errno 28\b|: I/O error", re.I)


def failure_reason(code: int, stderr: str, limits: CommandLimits | None, disk_mb: int | None = None) -> str:
    """Why a command failed, in words: the exit code, or the signal that killed it and the limit behind it.

    The guard shell reports a command killed by signal N as exit code 128 + N, as every shell does. `disk_mb`: the
    size of the jail's /tmp, named when what the command printed says it ran out of space.
    """
    try:
        sig = signal.Signals(-code if code < 0 else code - 128)
    except ValueError:
        reason = f"exit code {code}"
        if limits and limits.memory_mb is not None and _OUT_OF_MEMORY.search(stderr):
            reason += f": out of memory under the memory_mb limit {limits.memory_mb}"
        elif disk_mb is not None and _NO_SPACE.search(stderr):
            reason += f": disk limit of {disk_mb} MB reached"
        return reason
    reason = f"killed by {sig.name}"
    if limits is None:
        return reason
    which = _LIMIT_SIGNALS.get(sig)
    if which and (value := getattr(limits, which)) is not None:
        return f"{reason}: {which} limit {value} reached"
    if sig is signal.SIGKILL and limits.cpu_seconds is not None:
        return f"{reason}: SIGXCPU ignored past the cpu_seconds limit {limits.cpu_seconds}, or killed from outside"
    if sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS) and limits.memory_mb is not None:
        return f"{reason}: likely out of memory under the memory_mb limit {limits.memory_mb}"
    return reason


def _check_executable(program: str, env: dict[str, str], cwd: str | None, jail: Jail, readonly: list[str]) -> None:
    """TaskFailed saying why the executable cannot run (the guard shell would only say 127): none there, or none
    the jail shows (the system, the cwd, the install environment)."""
    if jail.isolation == "none":
        if "/" in program:
            path = program if os.path.isabs(program) or cwd is None else os.path.join(cwd, program)
            found = os.path.isfile(path) and os.access(path, os.X_OK)
        else:
            found = shutil.which(program, path=env.get("PATH", os.defpath)) is not None
    elif "/" in program:
        # With no cwd, a jailed command starts in its empty /tmp: nothing relative is there.
        path = program if os.path.isabs(program) else os.path.join(cwd, program) if cwd else ""
        found = bool(path) and _runnable(path, jail, cwd, readonly)
    else:
        dirs = [d for d in env.get("PATH", os.defpath).split(os.pathsep) if os.path.isabs(d)]
        found = any(_runnable(os.path.join(d, program), jail, cwd, readonly) for d in dirs)
    if not found:
        raise TaskFailed(f"cannot start {program!r}: no such executable")


def _runnable(path: str, jail: Jail, cwd: str | None, readonly: list[str]) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK) and jail.shows(path, cwd, readonly)


def _check_cwd(cwd: str, jail: Jail) -> None:
    """TaskFailed when the task's cwd cannot be shown to it: not a directory here, or one that would show what the
    jail hides (`/`, the install cache, the processor's home: the task is refused for good)."""
    if jail.isolation != "none" and not os.path.isabs(cwd):
        raise TaskFailed(f"cwd {cwd!r}: a confined command needs an absolute path", permanent=True)
    if not os.path.isdir(cwd):
        raise TaskFailed(f"cwd {cwd!r}: no such directory on this host")
    if jail.isolation != "none" and (clash := overlaps(cwd, jail.hidden)):
        raise TaskFailed(f"cwd {cwd!r} would show what the jail hides: {clash}", permanent=True)


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, int]:
    """Keeps the first `cap` bytes and drains the rest, so a chatty child never blocks or fills memory."""
    kept = bytearray()
    total = 0
    while chunk := await stream.read(65536):
        total += len(chunk)
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return bytes(kept), total


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class _Finished:
    code: int
    result: JsonObject
    stderr: str
    timed_out: bool
    spawned: bytes = b""  # the jail's spawn file, as the guard shell copied it out


@dataclass(frozen=True, slots=True)
class _Place:
    """Where one command of the run runs: its cwd (writable or not), what it sees read-only, its environment."""

    cwd: str | None
    cwd_writable: bool
    env: dict[str, str]
    readonly: tuple[str, ...] = ()
    spawn: bool = False  # the jail has a spawn file (TASKMILL_SPAWN_FILE)


async def run(payload: CommandPayload, ctx: RunContext) -> JsonObject:
    jail = ctx.jail
    confined = jail.isolation != "none"
    if payload.cwd is not None:
        _check_cwd(payload.cwd, jail)
    env = {k: v for k in _INHERITED_ENV if (v := os.environ.get(k)) is not None}
    if confined:
        env["HOME"] = env["TMPDIR"] = "/tmp"  # its private /tmp: the processor's home is hidden from it
    env.update(payload.env)
    env.update(ctx.secrets)
    env["TASKMILL_RUN_ID"] = str(ctx.run_id)  # documented: the run's id, its idempotency key as for http tasks
    try:
        async with jail.lease(payload.user) as run_as:
            if ctx.flow is None:
                return (await _run_confined(payload, ctx, env, run_as)).result
            # Subtasks: the command writes what it spawns to this file, one JSON object a line (taskmill/spawn.py).
            if confined:
                env["TASKMILL_SPAWN_FILE"] = SPAWN_FILE
                done = await _run_confined(payload, ctx, env, run_as, spawn=True)
                _take_spawns(done.spawned, ctx.flow)
                return done.result
            with _spawn_file(run_as) as spawn_file:
                env["TASKMILL_SPAWN_FILE"] = str(spawn_file)
                done = await _run_confined(payload, ctx, env, run_as)
                with spawn_file.open("rb") as f:
                    _take_spawns(f.read(_SPAWN_READ), ctx.flow)
                return done.result
    except JailRefused as exc:
        raise TaskFailed(str(exc), permanent=True) from None
    except JailBusy as exc:
        raise TaskFailed(str(exc)) from None


# A spawn file's directory is named by the host and pid of the processor that made it: one that was killed before
# its cleanup leaves it behind, and the next processor to start on the host removes it (sweep_spawn_dirs).
_SPAWN_PREFIX = "taskmill-spawn-"


def _spawn_dir_prefix() -> str:
    return f"{_SPAWN_PREFIX}{socket.gethostname()}.{os.getpid()}."


def sweep_spawn_dirs(root: Path | None = None) -> int:
    """Removes the spawn directories under `root` (the temporary directory) left by processors of this host that
    are gone; returns how many. A process is looked up by its pid, so processors of one host must share its pid
    namespace to share a temporary directory (as they do unless containers share a mounted /tmp); a zombie counts
    as gone."""
    host = socket.gethostname()
    removed = 0
    for directory in (root or Path(tempfile.gettempdir())).glob(f"{_SPAWN_PREFIX}*.*.*"):
        owner, _, _ = directory.name[len(_SPAWN_PREFIX) :].rpartition(".")
        made_on, _, pid = owner.rpartition(".")
        if made_on != host or not pid.isdigit() or alive(int(pid)):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed += 1
    return removed


@contextlib.contextmanager
def _spawn_file(run_as: RunAs | None) -> Iterator[Path]:
    """An empty file of the run's own that only the command's user can write, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=_spawn_dir_prefix()))
    try:
        directory.chmod(0o711)
        path = directory / "spawn.jsonl"
        path.touch(0o600)
        if run_as is not None and os.geteuid() == 0:
            os.chown(path, run_as.uid, run_as.gid)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _take_spawns(data: bytes, flow: Flow) -> None:
    from taskmill.spawn import SPAWN_FILE_MAX_BYTES, SpawnError, read_spawn_file  # spawn imports the models

    if len(data) > SPAWN_FILE_MAX_BYTES:
        raise SpawnError(f"TASKMILL_SPAWN_FILE holds more than {SPAWN_FILE_MAX_BYTES} bytes")
    specs, wait = read_spawn_file(data.decode(errors="replace"))
    flow.pending.extend(specs)
    flow.wait = flow.wait or wait


async def _run_confined(
    payload: CommandPayload, ctx: RunContext, env: dict[str, str], run_as: RunAs | None, spawn: bool = False
) -> _Finished:
    """The checks, the condition and the command (after the install steps, when it has any); the command's end."""
    # The run's deadline, kept here and shared by the checks, the condition and the command: what they printed is
    # recorded with the timeout (the processor cancels the run only REPORT_GRACE_S later: ends_at_timeout).
    deadline = time.monotonic() + ctx.timeout_seconds
    # A uid of its own owns nothing on the host: its cwd is shown read-only. An account (a named user, or a
    # processor's own user when it is not root) may write there as the host lets it.
    cwd_writable = run_as is None or run_as.account

    async def one(argv: list[str], place: _Place, main: bool = False) -> _Finished:
        _check_executable(argv[0], place.env, place.cwd, ctx.jail, list(place.readonly))
        budget = deadline - time.monotonic()
        finished = await _run_one(argv, payload, ctx, run_as, budget, replace(place, spawn=spawn), spawn and main)
        if finished.timed_out:
            raise TaskFailed(f"timed out after {ctx.timeout_seconds:g} s", finished.result)
        return finished

    needs = needs_of(payload.requirements, payload.install)
    if not needs:
        return await _checked_run(payload, partial(one, place=_Place(payload.cwd, cwd_writable, env)), ctx.jail)
    if ctx.install_cache is None:
        raise TaskFailed("install steps need a processor's install cache", permanent=True)

    async def step(argv: list[str], directory: Path) -> tuple[int, str]:
        # The build's only writable place is its directory (and its /tmp).
        done = await one(argv, _Place(str(directory), True, _with_env_dir(env, directory)))
        return done.code, done.stderr

    owner = (run_as.uid, run_as.gid) if run_as is not None and os.geteuid() == 0 else None
    try:
        async with ctx.install_cache.prepared(needs, step, owner) as directory:
            # The command sees its environment read-only.
            place = _Place(payload.cwd, cwd_writable, _with_env_dir(env, directory), (str(directory),))
            return await _checked_run(payload, partial(one, place=place), ctx.jail)
    except InstallFailed as exc:
        raise TaskFailed(str(exc)) from None


def _with_env_dir(env: dict[str, str], directory: Path) -> dict[str, str]:
    """The environment with the install directory's bin/ first on PATH (and VIRTUAL_ENV, as `activate` sets)."""
    return env | {"PATH": f"{directory}/bin:{env.get('PATH', os.defpath)}", "VIRTUAL_ENV": str(directory)}


async def _checked_run(payload: CommandPayload, one: Callable[..., Awaitable[_Finished]], jail: Jail) -> _Finished:
    """The checks, the condition, then the command."""
    for i, check in enumerate(payload.checks, 1):
        done = await one(check)
        if done.code != 0:
            raise TaskFailed(
                f"check {i} failed: {shlex.join(check)} exit {done.code}: {stderr_tail(done.stderr)}", done.result
            )
    if payload.run_if is not None:
        done = await one(payload.run_if)
        if done.code != 0:
            raise TaskSkipped(
                f"run_if {shlex.join(payload.run_if)} exit {done.code}: {stderr_tail(done.stderr)}", done.result
            )
    done = await one(payload.argv, main=True)
    if done.code not in payload.expected_exit_codes:
        disk_mb = jail.disk_mb if jail.isolation != "none" else None
        raise TaskFailed(failure_reason(done.code, done.stderr, payload.limits, disk_mb), done.result)
    return done


async def _run_one(
    command: list[str], payload: CommandPayload, ctx: RunContext, run_as: RunAs | None, budget_s: float,
    place: _Place, collect: bool = False,
) -> _Finished:  # fmt: skip
    """Runs one command of the task (an install step, a check, the condition, the command itself) in the jail,
    within `budget_s`; with `collect`, what it wrote to the jail's spawn file comes back in `spawned`."""
    if not collect:
        return await _run_guarded(command, payload, ctx, run_as, budget_s, place, None)
    # The guard shell copies the jail's spawn file out to this pipe, when the command is done. It opens it again
    # through /proc, which the pipe's owner may: the run's user.
    read_end, write_end = os.pipe()
    if run_as is not None and os.geteuid() == 0:
        os.fchown(write_end, run_as.uid, run_as.gid)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(read_end, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except BaseException:
        pipe.close()
        os.close(write_end)
        raise
    try:
        return await _run_guarded(command, payload, ctx, run_as, budget_s, place, (write_end, reader))
    finally:
        transport.close()


async def _run_guarded(
    command: list[str], payload: CommandPayload, ctx: RunContext, run_as: RunAs | None, budget_s: float,
    place: _Place, spawn: tuple[int, asyncio.StreamReader] | None,
) -> _Finished:  # fmt: skip
    """`_run_one`, given the write end of the spawn file's pipe (closed here once the child has it) and its
    reader."""
    jail = ctx.jail
    guard = [
        "/bin/sh",
        "-c",
        _GUARD,
        "taskmill-guard",
        str(spawn[0]) if spawn else "",
        SPAWN_FILE if place.spawn else "",
    ]
    user = jail.unconfined_user(run_as)
    try:
        with jail.confine(
            [*guard, *command],
            run_as=run_as,
            network=payload.network,
            cwd=place.cwd,
            cwd_writable=place.cwd_writable,
            readonly=place.readonly,
            spawn=place.spawn,
        ) as confined:
            proc = await asyncio.create_subprocess_exec(
                *confined.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=place.cwd if jail.isolation == "none" else None,
                env=place.env,
                start_new_session=True,
                pass_fds=(*confined.fds, spawn[0]) if spawn else confined.fds,
                preexec_fn=partial(_prepare_child, payload.limits.rlimits() if payload.limits else [], user),
            )
    except OSError as exc:
        raise TaskFailed(f"cannot start {command[0]!r}: {exc.strerror or exc}") from exc
    finally:
        if spawn:
            os.close(spawn[0])  # the child holds it now: the pipe ends when the guard shell does
    assert proc.stdout is not None and proc.stderr is not None
    spawned = _read_capped(spawn[1], _SPAWN_READ) if spawn else _nothing()
    readers = asyncio.gather(
        _read_capped(proc.stdout, ctx.output_cap), _read_capped(proc.stderr, ctx.output_cap), spawned
    )
    timed_out = False
    try:
        try:
            async with asyncio.timeout(max(0.0, budget_s)):
                code = await proc.wait()
        except TimeoutError:
            # The group goes, and what it printed is kept.
            timed_out = True
            _kill_group(proc.pid)
            code = await proc.wait()
        try:
            async with asyncio.timeout(_DRAIN_S):
                (out, out_total), (err, err_total), (spawn_data, _) = await asyncio.shield(readers)
        except TimeoutError:
            # The command is done but left processes holding its output open: they go with its group.
            _kill_group(proc.pid)
            (out, out_total), (err, err_total), (spawn_data, _) = await readers
    except BaseException:
        # Timeout or shutdown: the whole process group goes, grandchildren included.
        _kill_group(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        readers.cancel()
        await asyncio.gather(readers, return_exceptions=True)
        raise
    finally:
        _kill_group(proc.pid)
    stdout, _ = cap_text(out, ctx.output_cap)
    stderr, _ = cap_text(err, ctx.output_cap)
    result: JsonObject = {
        "exit_code": code,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_bytes": out_total,
        "stderr_bytes": err_total,
        "truncated": out_total > ctx.output_cap or err_total > ctx.output_cap,
    }
    return _Finished(code, result, stderr, timed_out, spawn_data)


async def _nothing() -> tuple[bytes, int]:
    return b"", 0


COMMAND = TaskType(
    "command",
    "Runs an executable with arguments (no shell), env and cwd; fails on an unexpected exit code.",
    CommandPayload,
    run,
    ends_at_timeout=True,
)
