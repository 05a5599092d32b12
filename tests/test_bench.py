"""The benchmark itself keeps working: a small run through its real code path, not a timed test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest

from tests.conftest import AMQP, PG_ADMIN, _dsn


@pytest.mark.slow
async def test_the_benchmark_runs_both_workloads_and_reports_no_lost_or_duplicate_runs() -> None:
    dbname = f"tmtest_bench_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, DATABASE_URL=_dsn(dbname), AMQP_URL=AMQP)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "burst",
                "at",
                "--runs",
                "300",
                "--at-runs",
                "100",
                "--at-ahead",
                "3",
                "--processors",
                "1",
                "--concurrency",
                "50",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    burst, at = lines
    assert (burst["workload"], burst["runs"], burst["lost"], burst["duplicates"]) == ("burst", 300, 0, 0)
    assert burst["runs_per_s"] > 0
    assert (at["workload"], at["runs"], at["lost"], at["duplicates"]) == ("at", 100, 0, 0)
    assert 0 <= at["lateness_ms"]["p50"] <= at["lateness_ms"]["max"]
