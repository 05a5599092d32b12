"""`taskmill logs` and `taskmill audit` as a user runs them: a subprocess talking HTTP to a real API server."""

from __future__ import annotations

import asyncio
import sys

import httpx

import distributor.service
import processor.service
from taskmill.settings import Settings
from taskmill.tokens import mint
from tests.api.conftest import SECRET, served_api


async def taskmill(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskmill.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_logs_and_audit_show_a_tasks_output_and_history(api_settings: Settings) -> None:
    token = mint(SECRET, "alice", "tasks:read tasks:write tasks:command")
    async with served_api(api_settings) as (base, served), httpx.AsyncClient(base_url=base) as client:
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
