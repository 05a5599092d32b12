"""What the references share: their database and its ledger, their worker processes, the figures from the ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO = Path(__file__).resolve().parents[2]
"""The workers run here, so that `bench.references` is importable in them as in `python -m bench`."""

# No key on purpose: a job executed twice writes two rows, and that is what `duplicates` counts.
LEDGER_DDL = "CREATE TABLE ledger (job_id bigint NOT NULL, executed_at timestamptz NOT NULL)"

POLL_S = 0.1
"""How often the bench counts the ledger while it waits (one `count(*)`, so the wait loads the database little)."""
STALL_S = 60.0
"""A wait gives up when the ledger has not grown for this long; what is missing is then reported as lost."""
SETTLE_S = 1.0
"""After the last job, the time given to any late duplicate to show in the ledger before it is counted."""


def database_for(dsn: str, system: str) -> str:
    """The reference's own database beside the bench's: `taskmill_bench` gives `taskmill_bench_celery`."""
    return with_database(dsn, f"{database_of(dsn)}_{system}")


def database_of(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def with_database(dsn: str, name: str) -> str:
    """`dsn` naming another database on the same server (a Unix socket's `?host=` query kept)."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def create_database(dsn: str) -> None:
    """Drops and creates the database, with an empty ledger."""
    name = database_of(dsn)
    admin = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(LEDGER_DDL)
    finally:
        await conn.close()


async def drop_database(dsn: str) -> None:
    name = database_of(dsn)
    admin = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class Workers:
    """A reference's processes (workers, Celery's beat): each in a session of its own, its output in a log file
    that a failure quotes, stopped with SIGTERM (then SIGKILL to its process group) at the end."""

    def __init__(self, system: str) -> None:
        self.system = system
        self.logdir = Path(tempfile.mkdtemp(prefix=f"taskmill-bench-{system}-"))
        self.procs: list[tuple[str, asyncio.subprocess.Process, Path]] = []

    async def spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        log = self.logdir / f"{name}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.procs.append((name, proc, log))

    def check(self) -> None:
        """Raises, quoting its log, when a process has exited."""
        for name, proc, log in self.procs:
            if proc.returncode is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.system} {name} exited with status {proc.returncode}:\n{tail}")

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each process with its children (Celery's prefork pool processes)."""
        out = {}
        for name, proc, _ in self.procs:
            total = sum(_rss_kb(pid) for pid in [proc.pid, *_descendants(proc.pid)])
            if total:
                out[name] = round(total / 1024, 1)
        return out

    async def stop(self, timeout_s: float = 30.0) -> None:
        for _, proc, _ in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        shutil.rmtree(self.logdir, ignore_errors=True)


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _descendants(pid: int) -> list[int]:
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [d for c in children for d in (c, *_descendants(c))]


async def wait_ledger(conn: asyncpg.Connection, rows: int, workers: Workers, where: str = "true") -> None:
    """Until the ledger has `rows` rows (`where`) and as many distinct jobs; or it stalls (STALL_S)."""
    last, last_change = -1, time.monotonic()
    while True:
        workers.check()
        count = await conn.fetchval(f"SELECT count(*) FROM ledger WHERE {where}")
        if count >= rows and await conn.fetchval(f"SELECT count(DISTINCT job_id) FROM ledger WHERE {where}") >= rows:
            return
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            return
        await asyncio.sleep(POLL_S)


async def integrity(conn: asyncpg.Connection, jobs: int) -> dict[str, int]:
    """lost = jobs - distinct job ids; duplicates = ledger rows - distinct job ids."""
    await asyncio.sleep(SETTLE_S)
    row = await conn.fetchrow(
        "SELECT count(*) AS rows, count(DISTINCT job_id) AS distinct FROM ledger WHERE job_id >= 0 AND job_id < $1",
        jobs,
    )
    assert row is not None
    rows, distinct = row["rows"], row["distinct"]
    return {"lost": jobs - distinct, "duplicates": rows - distinct}


async def lateness_ms(conn: asyncpg.Connection, due: dt.datetime) -> dict[str, float]:
    """Percentiles of each job's (first) start after `due`."""
    rows = await conn.fetch(
        "SELECT (extract(epoch FROM min(executed_at) - $1) * 1000)::float8 AS ms FROM ledger GROUP BY job_id", due
    )
    return percentiles([r["ms"] for r in rows])


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """As bench/__main__.py reports them: p50, p95, p99 and max, in one decimal."""
    import numpy as np

    if not values:
        return {}
    a = np.asarray(values)
    return {k: round(float(np.percentile(a, q)), 1) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))} | {
        "max": round(float(a.max()), 1)
    }


def burst_line(system: str, jobs: int, start: dt.datetime, end: dt.datetime | None, **rest: Any) -> dict[str, Any]:
    """The burst result line: wall from the first enqueue request to the last ledger row."""
    wall = (end - start).total_seconds() if end else None
    return {
        "system": system,
        "workload": "burst",
        "runs": jobs,
        "wall_s": round(wall, 2) if wall else None,
        "runs_per_s": round(jobs / wall) if wall else None,
        **rest,
    }


async def measure_at(conn: asyncpg.Connection, due: dt.datetime, jobs: int, workers: Workers) -> dict[str, Any]:
    """Waits out the instant `due` and every job's ledger row: the starts' lateness after `due`, and the ledger's
    lost and duplicate counts."""
    await asyncio.sleep(max(0.0, (due - await conn.fetchval("SELECT clock_timestamp()")).total_seconds()))
    await wait_ledger(conn, jobs, workers)
    return {"lateness_ms": await lateness_ms(conn, due), **await integrity(conn, jobs)}
