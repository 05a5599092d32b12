"""What the kernel says about processes, read from /proc: state, command line, environment, parent, group.

Every reader tolerates a process that vanishes under it (it is then reported as gone) and one it may not read
(another user's: left out).
"""

from __future__ import annotations

from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()


def state(pid: int) -> str | None:
    """The state letter (R, S, Z, ...), or None when there is no such process."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z")


def parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def cmdline(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return "?"


def environ(pid: int) -> dict[str, str]:
    """The environment a process started with; empty when it is gone or not ours to read."""
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def pids() -> list[int]:
    return [int(entry.name) for entry in _PROC.iterdir() if entry.name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    members = []
    for pid in pids():
        fields = _stat_fields(pid)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(pid)
    return members


def ancestors(pid: int) -> list[int]:
    """The parent, its parent, ... up to (not including) pid 0."""
    chain = []
    current = parent(pid)
    while current and current not in chain:
        chain.append(current)
        current = parent(current)
    return chain


def marked(name: str, value: str) -> list[int]:
    """Live processes whose environment has `name=value`."""
    return [pid for pid in pids() if alive(pid) and environ(pid).get(name) == value]


def describe(pid: int) -> str:
    return f"pid {pid} (parent {parent(pid)}, state {state(pid)}): {cmdline(pid)}"
