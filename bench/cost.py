"""What a workload cost: CPU of each role, of PostgreSQL and of RabbitMQ, rows and WAL written, index entries read.

CPU comes from /proc (utime + stime of every process of a group, plus what its exited children used: PostgreSQL's
backends come and go, and their time lands in the postmaster's cutime and cstime). Table and index counters come
from pg_stat_user_tables and pg_stat_user_indexes of the bench database, WAL from the LSN moving.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

_TICKS = os.sysconf("SC_CLK_TCK")


def _times(pid: int) -> tuple[float, float] | None:
    """(own CPU s, reaped children's CPU s) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime) / _TICKS, (cutime + cstime) / _TICKS


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def tree_cpu_s(root: int) -> float:
    """CPU seconds of `root`, its live children and every child it has reaped (one level: enough for a postmaster
    and its backends, a role and the commands it ran)."""
    own = _times(root)
    if own is None:
        return 0.0
    return own[0] + own[1] + sum(t[0] for pid in _children(root) if (t := _times(pid)) is not None)


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` (the RabbitMQ node the bench talks to, not the fault tests' own)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return None


async def postmaster_pid(conn: asyncpg.Connection) -> int:
    """The postmaster of the server `conn` talks to (this machine's: the bench runs beside it)."""
    backend: int = await conn.fetchval("SELECT pg_backend_pid()")
    stat = Path(f"/proc/{backend}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


TABLES = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables
"""
INDEXES = "SELECT indexrelname, idx_scan, idx_tup_read, idx_tup_fetch FROM pg_stat_user_indexes"


@dataclass(frozen=True, slots=True)
class Snapshot:
    cpu_s: dict[str, float]
    tables: dict[str, tuple[int, ...]]
    indexes: dict[str, tuple[int, ...]]
    wal_lsn: str


def cpu(groups: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """CPU seconds per group of process trees, now."""
    return {name: sum(tree_cpu_s(pid) for pid in pids) for name, pids in groups.items()}


async def snapshot(conn: asyncpg.Connection, groups: Mapping[str, Iterable[int]]) -> Snapshot:
    """CPU seconds per group of process trees, and the database's counters, now. A backend flushes its counters
    when it has been idle 10 s: the caller takes the last snapshot's counters that long after the work (and its
    CPU at the work's end, `with_cpu`)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    tables = {r[0]: tuple(r[1:]) for r in await conn.fetch(TABLES)}
    indexes = {r[0]: tuple(r[1:]) for r in await conn.fetch(INDEXES)}
    wal: str = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
    return Snapshot(cpu(groups), tables, indexes, wal)


def with_cpu(snap: Snapshot, cpu_s: dict[str, float]) -> Snapshot:
    return Snapshot(cpu_s, snap.tables, snap.indexes, snap.wal_lsn)


def _delta(after: dict[str, tuple[int, ...]], before: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    zero = (0,) * len(next(iter(after.values()), ()))
    return {k: tuple(a - b for a, b in zip(v, before.get(k, zero), strict=True)) for k, v in after.items()}


async def cost(conn: asyncpg.Connection, before: Snapshot, after: Snapshot, runs: int) -> dict[str, Any]:
    """The workload's cost between two snapshots, per run where it makes sense."""
    wal = await conn.fetchval(
        "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::bigint", after.wal_lsn, before.wal_lsn
    )
    tables = _delta(after.tables, before.tables)
    indexes = _delta(after.indexes, before.indexes)
    per_run = 1000 / max(1, runs)
    return {
        "cpu_ms_per_run": {k: round((after.cpu_s[k] - before.cpu_s.get(k, 0.0)) * per_run, 3) for k in after.cpu_s},
        "rows_per_run": {
            name: {
                "ins": round(i / runs, 2),
                "upd": round(u / runs, 2),
                "hot": round(h / runs, 2),
                "del": round(d / runs, 2),
            }
            for name, (i, u, h, d) in sorted(tables.items())
            if i or u or d
        },
        "wal_bytes_per_run": round(int(wal) / max(1, runs)),
        "index_reads": {
            name: {"scans": s, "entries_read": r, "rows_fetched": f} for name, (s, r, f) in sorted(indexes.items()) if s
        },
    }


# Entries an index scan may read per entry it returns during a burst before the bench calls it a problem: a claim
# walks the entries its own batch and the one before left dead, a few per row; a plan that walks a whole index per
# call (as a generic plan made on an empty table once did) reads thousands.
MAX_ENTRIES_PER_ROW = 10.0


def worst_index_reads(index_reads: Mapping[str, Mapping[str, int]]) -> tuple[str, float]:
    """The index whose scans read the most entries per entry they returned (the bench's check that no hot
    statement walks dead or non-matching entries): (name, entries read per entry returned, at least 1 returned)."""
    worst = ("", 0.0)
    for name, n in index_reads.items():
        ratio = n["entries_read"] / max(1, n["rows_fetched"])
        if n["entries_read"] > 1000 and ratio > worst[1]:
            worst = (name, round(ratio, 1))
    return worst


def index_check(index_reads: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """The bench's check that no hot statement reads more than a few index entries per row it returns."""
    name, ratio = worst_index_reads(index_reads)
    return {"worst": name, "entries_read_per_row": ratio, "ok": ratio <= MAX_ENTRIES_PER_ROW}
