"""`command`: runs an executable (argv, no shell) in its own process group, output captured up to a cap."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal

from pydantic import BaseModel, ConfigDict, Field

from taskmill.tasktypes.base import JsonObject, RunContext, TaskFailed, TaskType, cap_text

_PR_SET_PDEATHSIG = 1
# How long output may keep flowing after the command exits, from processes it left behind.
_DRAIN_S = 0.5
# What a command inherits from the processor; everything else it gets from its payload's env.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


class CommandPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    expected_exit_codes: list[int] = Field(default_factory=lambda: [0], min_length=1)


# The command runs under a small shell that leads its process group. When the processor dies, even by SIGKILL,
# the kernel sends that shell SIGTERM (PR_SET_PDEATHSIG) and it kills the whole group, grandchildren included,
# instead of leaving them to run on beside the attempt the rescuer starts elsewhere.
_GUARD = 'trap "kill -KILL 0" TERM HUP; "$@" & wait $!'


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _check_executable(program: str, env: dict[str, str], cwd: str | None) -> None:
    """The executable's path, or TaskFailed saying why it cannot run (the guard shell would only say 127)."""
    if "/" in program:
        path = program if os.path.isabs(program) or cwd is None else os.path.join(cwd, program)
        found = path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise TaskFailed(f"cannot start {program!r}: no such executable")


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


async def run(payload: CommandPayload, ctx: RunContext) -> JsonObject:
    env = {k: v for k in _INHERITED_ENV if (v := os.environ.get(k)) is not None}
    env.update(payload.env)
    env.update(ctx.secrets)
    _check_executable(payload.argv[0], env, payload.cwd)
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            _GUARD,
            "taskmill-guard",
            *payload.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=payload.cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    except OSError as exc:
        raise TaskFailed(f"cannot start {payload.argv[0]!r}: {exc.strerror or exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    readers = asyncio.gather(_read_capped(proc.stdout, ctx.output_cap), _read_capped(proc.stderr, ctx.output_cap))
    try:
        code = await proc.wait()
        try:
            async with asyncio.timeout(_DRAIN_S):
                (out, out_total), (err, err_total) = await asyncio.shield(readers)
        except TimeoutError:
            # The command is done but left processes holding its output open: they go with its group.
            _kill_group(proc.pid)
            (out, out_total), (err, err_total) = await readers
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
    if code not in payload.expected_exit_codes:
        raise TaskFailed(f"exit code {code}", result)
    return result


COMMAND = TaskType(
    "command",
    "Runs an executable with arguments (no shell), env and cwd; fails on an unexpected exit code.",
    CommandPayload,
    run,
)
