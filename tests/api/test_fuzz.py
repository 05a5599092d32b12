"""Property-based fuzzing with schemathesis against the app's own OpenAPI schema, a real server and database:
no input may make the API answer 500."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from taskmill.settings import Settings
from taskmill.tokens import mint
from tests.api.conftest import SECRET, served_api

ST = str(Path(sys.executable).with_name("st"))


@pytest.mark.slow
async def test_no_generated_request_makes_the_api_answer_500(api_settings: Settings) -> None:
    async with served_api(api_settings) as (base, _):
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
            # The stateful phase finds no links in this schema (0 covered); two workers halve the wall time.
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    report = out.decode()
    assert proc.returncode == 0, report[-4000:]
    assert "generated" in report and "Server error" not in report
