"""Runaway tasks against a real processor process: each ends at its timeout (or its cap), takes nothing with it,
and leaves the processor healthy with its memory (RSS, read from /proc) bounded.

Each test starts `taskmill processor` as a subprocess, warms it up with a short http and command run, takes its
RSS as the baseline, then samples the RSS every 10 ms while the runaway runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from distributor.service import run as distributor_run
from taskmill.settings import Settings
from tests.faults import procs
from tests.helpers import new_task, start_role_process, wait_until
from tests.processor.http_targets import Target, serving

MIB = 1024 * 1024
# RSS growth allowed during a runaway: far below what the runaways push at the processor (checked per test).
RSS_BOUND = 32 * MIB


def rss(pid: int) -> int:
    """Resident set size in bytes, from /proc/<pid>/status (0 when the process is gone)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(slots=True)
class Processor:
    proc: asyncio.subprocess.Process
    settings: Settings
    db: asyncpg.Connection
    baseline: int = 0
    peak: int = 0

    async def sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.proc.pid))
            await asyncio.sleep(0.01)

    async def finish(self, name: str, type_: str, payload: dict[str, Any], **options: Any) -> asyncpg.Record:
        """Creates a task, publishes its run and waits until the run is terminal; returns the run and its result."""
        task = await new_task(self.db, name, type_, payload, **options)
        await distributor_run(self.settings, until_idle=True)
        query = """SELECT s.status::text AS status, r.error, r.result, r.duration_ms
                   FROM task_schedule s LEFT JOIN task_results r ON r.run_id = s.id
                   WHERE s.task_id = $1 AND s.status IN ('succeeded', 'failed', 'dead')"""

        async def done() -> bool:
            assert self.proc.returncode is None, f"the processor exited with {self.proc.returncode}"
            return await self.db.fetchrow(query, task.id) is not None

        await wait_until(done, timeout=20, what=f"the run of {name} to end")
        row = await self.db.fetchrow(query, task.id)
        assert row is not None
        return row

    async def assert_healthy(self) -> None:
        """Still running, and still running runs."""
        row = await self.finish("after", "noop", {"still": "here"})
        assert (row["status"], row["result"]) == ("succeeded", {"still": "here"})
        assert self.proc.returncode is None

    def growth(self) -> int:
        return self.peak - self.baseline


@asynccontextmanager
async def processor(settings: Settings, db: asyncpg.Connection, target: Target, **env: str) -> AsyncIterator[Processor]:
    proc = await start_role_process(settings, "processor", "--concurrency", "4", **env)
    p = Processor(proc, settings, db)
    sampler: asyncio.Task[None] | None = None
    try:
        await p.finish("warm-up http", "http", {"url": target.url()})
        await p.finish("warm-up command", "command", {"argv": ["sh", "-c", "echo warm"]})
        p.baseline = p.peak = rss(proc.pid)
        sampler = asyncio.create_task(p.sample())
        yield p
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_an_http_target_that_never_answers_fails_the_run_at_its_timeout(
    settings: Settings, db: asyncpg.Connection
) -> None:
    async with serving() as target, processor(settings, db, target) as p:
        row = await p.finish("silent", "http", {"url": target.url("/hang")}, timeout_seconds=1)
        assert (row["status"], row["error"]) == ("failed", "timed out after 1 s")
        assert 900 <= row["duration_ms"] < 3000

        async def hung_up() -> bool:
            return target.hung_up == 1

        await wait_until(hung_up, timeout=5, what="the processor to close the connection")
        await p.assert_healthy()


async def test_an_endless_http_body_is_cut_at_the_cap_with_memory_bounded(
    settings: Settings, db: asyncpg.Connection
) -> None:
    cap = 96 * MIB
    async with serving() as target, processor(settings, db, target, TASKMILL_HTTP_MAX_RESPONSE_BYTES=str(cap)) as p:
        row = await p.finish("firehose", "http", {"url": target.url("/endless")}, timeout_seconds=20)
        assert row["status"] == "succeeded", row["error"]
        result = row["result"]
        assert (result["status"], result["complete"], result["truncated"]) == (200, False, True)
        assert cap <= result["body_bytes"] < cap + MIB
        assert len(result["body"]) == settings.output_cap_bytes
        assert target.sent >= cap
        assert p.growth() < RSS_BOUND, f"RSS grew {p.growth() / MIB:.1f} MiB while reading {cap / MIB:.0f} MiB"
        await p.assert_healthy()


async def test_a_command_that_traps_term_is_killed_at_its_timeout_with_its_whole_group(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # The command ignores TERM, and so does the child it leaves sleeping in the background.
    script = (
        "trap '' TERM; sh -c \"trap '' TERM; sleep 60\" & "
        'echo "$$ $!" > pids.tmp; mv pids.tmp pids; while :; do sleep 0.1; done'
    )
    async with serving() as target, processor(settings, db, target) as p:
        pending = asyncio.create_task(
            p.finish("stubborn", "command", {"argv": ["sh", "-c", script], "cwd": str(tmp_path)}, timeout_seconds=1)
        )

        async def started() -> bool:
            return (tmp_path / "pids").exists()

        await wait_until(started, timeout=20, what="the command to start")
        pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
        pgid = int(Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[2])
        assert len(procs.group_members(pgid)) >= 3  # guard shell, the command, its child (and their sleeps)
        row = await pending
        assert (row["status"], row["error"]) == ("failed", "timed out after 1 s")

        async def group_gone() -> bool:
            return procs.group_members(pgid) == []

        await wait_until(group_gone, timeout=3, what=f"process group {pgid} to be gone")
        assert not any(procs.alive(pid) for pid in pids)
        await p.assert_healthy()


async def test_a_command_with_endless_output_ends_at_its_timeout_with_output_capped_and_memory_bounded(
    settings: Settings, db: asyncpg.Connection
) -> None:
    async with serving() as target, processor(settings, db, target) as p:
        row = await p.finish("chatterbox", "command", {"argv": ["yes", "taskmill"]}, timeout_seconds=1.5)
        assert (row["status"], row["error"]) == ("failed", "timed out after 1.5 s")
        result = row["result"]
        cap = settings.output_cap_bytes
        assert result["stdout"] == ("taskmill\n" * (cap // 9 + 1))[:cap]
        assert result["truncated"] is True
        assert result["stdout_bytes"] > 2 * RSS_BOUND, result["stdout_bytes"]  # it did push plenty
        assert p.growth() < RSS_BOUND, f"RSS grew {p.growth() / MIB:.1f} MiB while draining"
        await p.assert_healthy()
