"""The roles as separate `taskmill` processes against the local services, for the pipeline workloads."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from taskmill.tokens import mint

JWT_SECRET = "bench-secret-of-at-least-thirty-two-bytes"
_START_S = 120.0


@dataclass(frozen=True, slots=True)
class Setup:
    processors: int = 2
    concurrency: int = 2500
    distributors: int = 1
    queue_type: str = "quorum"
    transport: str = "amqp"  # or postgres: the roles without RabbitMQ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Stack:
    dsn: str
    amqp: str
    prefix: str
    setup: Setup
    port: int = field(default_factory=_free_port)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            DATABASE_URL=self.dsn,
            AMQP_URL=self.amqp,
            TASKMILL_BROKER_PREFIX=self.prefix,
            TASKMILL_LOG_LEVEL="WARNING",
            TASKMILL_QUEUE_TYPE=self.setup.queue_type,
            TASKMILL_TRANSPORT=self.setup.transport,
        )

    async def start(self) -> None:
        # The first distributor declares the topology; the others and the processors start once it exists.
        await self._spawn("scheduler", "scheduler")
        await self._spawn("distributor-1", "distributor")
        await asyncio.sleep(1.0)
        for i in range(2, self.setup.distributors + 1):
            await self._spawn(f"distributor-{i}", "distributor")
        for i in range(1, self.setup.processors + 1):
            await self._spawn(f"processor-{i}", "processor", "--concurrency", str(self.setup.concurrency))
        await self._spawn("api", "api", JWT_SECRET=JWT_SECRET, TASKMILL_API_PORT=str(self.port))
        await self._api_healthy()
        await asyncio.sleep(1.0)  # the processors subscribe

    async def _api_healthy(self) -> None:
        """Until GET /health answers 200: the roles' imports take seconds on a busy machine, more with several
        starting at once. RuntimeError if a role exits meanwhile or the API is not up in `_START_S`."""
        deadline = time.monotonic() + _START_S
        async with httpx.AsyncClient(base_url=self.url) as client:
            while time.monotonic() < deadline:
                if exited := {name: p.returncode for name, p in self.procs.items() if p.returncode is not None}:
                    raise RuntimeError(f"roles exited while the stack started: {exited}")
                try:
                    if (await client.get("/health", timeout=5)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the API did not answer GET /health within {_START_S:.0f} s")

    async def _spawn(self, name: str, *argv: str, **env: str) -> None:
        self.procs[name] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "taskmill.cli", *argv, env=self.env | env
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        return mint(JWT_SECRET, "bench", "tasks:read tasks:write", 3600)

    def pids(self) -> dict[str, list[int]]:
        """Process ids by role (distributors together, processors together)."""
        groups: dict[str, list[int]] = {}
        for name, proc in self.procs.items():
            groups.setdefault(name.split("-")[0], []).append(proc.pid)
        return groups

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            out[name] = round(rss / 1024, 1)
        return out

    async def stop(self) -> None:
        """SIGTERM to every role, SIGKILL to one still there 30 s later; returns once each is reaped."""
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
