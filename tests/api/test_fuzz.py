"""Property-based fuzzing with schemathesis against the app's own OpenAPI schema, a real server and database:
no input may make the API answer 500."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

import api.service
from taskmill.settings import Settings
from taskmill.tokens import mint
from tests.api.conftest import SECRET
from tests.api.test_inspect_cli import free_port
from tests.helpers import running, wait_until

ST = str(Path(sys.executable).with_name("st"))


@pytest.mark.slow
async def test_no_generated_request_makes_the_api_answer_500(api_settings: Settings) -> None:
    port = free_port()
    served = api_settings.model_copy(update={"api_port": port})
    base = f"http://127.0.0.1:{port}"
    async with running(api.service.run, served), httpx.AsyncClient(base_url=base) as client:

        async def up() -> bool:
            try:
                return (await client.get("/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(up, 10, what="the API to listen")
        proc = await asyncio.create_subprocess_exec(
            ST,
            "run",
            f"{base}/openapi.json",
            "--header",
            f"Authorization: Bearer {mint(SECRET, 'fuzz', 'admin')}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--seed",
            "20261122",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    report = out.decode()
    assert proc.returncode == 0, report[-4000:]
    assert "generated" in report and "Server error" not in report
