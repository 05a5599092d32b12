"""`taskmill logs` and `taskmill audit` as a user runs them: a subprocess talking HTTP to a real API server."""

from __future__ import annotations

import asyncio
import socket
import sys

import httpx

import api.service
import distributor.service
import processor.service
from taskmill.settings import Settings
from taskmill.tokens import mint
from tests.api.conftest import SECRET
from tests.helpers import running, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def taskmill(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskmill.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_logs_and_audit_show_a_tasks_output_and_history(api_settings: Settings) -> None:
    port = free_port()
    served = api_settings.model_copy(update={"api_port": port})
    base = f"http://127.0.0.1:{port}"
    token = mint(SECRET, "alice", "tasks:read tasks:write")
    async with running(api.service.run, served), httpx.AsyncClient(base_url=base) as client:

        async def up() -> bool:
            try:
                return (await client.get("/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(up, 10, what="the API to listen")
        body = {"name": "greeter", "type": "command", "payload": {"argv": ["sh", "-c", "echo hello; echo oops >&2"]}}
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.post("/tasks", json=body, headers=headers)).status_code == 201
        await distributor.service.run(served, until_idle=True)
        await processor.service.run(served, until_idle=True)

        code, out, err = await taskmill("logs", "greeter", "--api", base, "--token", token)
        assert code == 0, err
        assert "succeeded" in out
        assert "stdout| hello" in out and "stderr| oops" in out

        code, out, err = await taskmill("audit", "greeter", "--api", base, "--token", token)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["at", "run", "from", "to", "attempt", "worker"]
        assert [line.split()[3:5] for line in lines[2:]] == [
            ["-", "scheduled"],
            ["scheduled", "queued"],
            ["queued", "running"],
            ["running", "succeeded"],
        ]

        code, _, err = await taskmill("logs", "nobody", "--api", base, "--token", token)
        assert (code, err.strip()) == (1, "taskmill logs: no task named 'nobody'")
        code, _, err = await taskmill("audit", "greeter", "--api", base)
        assert code == 1 and "401" in err
