"""Property-based fuzzing with schemathesis against the app's own OpenAPI schema, a real server and database:
no input may make the API answer 500."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from taskmill.settings import Settings
from taskmill.tokens import mint
from tests.api.conftest import SECRET, served_api

ST = str(Path(sys.executable).with_name("st"))


# A fixed budget in `make test`: a few examples per operation, without the coverage phase (schemathesis's boundary
# values for every parameter, which takes most of the time); `make soak` runs all of it with many more examples.
LONG = os.environ.get("TASKMILL_MODEL_BUDGET") == "long"
EXAMPLES = "100" if LONG else "10"
PHASES = "examples,coverage,fuzzing" if LONG else "examples,fuzzing"

# Two processes, each fuzzing half the operations, not one with two worker threads: in threads, CPython 3.11's
# ast.parse (hypothesis describing a filter) races on the interpreter's recursion counter and fails now and then
# with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). `/tasks` paths, and the rest.
HALVES = (("--include-path-regex", "^/tasks"), ("--exclude-path-regex", "^/tasks"))


@pytest.mark.slow
@pytest.mark.timeout(2000 if LONG else 300)
async def test_no_generated_request_makes_the_api_answer_500(api_settings: Settings) -> None:
    async with served_api(api_settings) as (base, _):
        reports = await asyncio.gather(*(_fuzz(base, *half) for half in HALVES))
    for returncode, report in reports:
        assert returncode == 0, report[-4000:]
        assert "generated" in report and "Server error" not in report


async def _fuzz(base: str, *selection: str) -> tuple[int | None, str]:
    proc = await asyncio.create_subprocess_exec(
        ST,
        "run",
        f"{base}/openapi.json",
        *selection,
        "--header",
        f"Authorization: Bearer {mint(SECRET, 'fuzz', 'admin')}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        EXAMPLES,
        "--seed",
        "20261122",
        "--no-color",
        # The stateful phase finds no links in this schema (0 covered).
        "--phases",
        PHASES,
        "--workers",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 1800 if LONG else 240)
    return proc.returncode, out.decode()
