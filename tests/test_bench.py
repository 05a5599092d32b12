"""The benchmark itself keeps working: a small run through its real code path, not a timed test."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import pytest

from bench import references
from tests import services


@pytest.mark.slow
async def test_the_benchmark_runs_both_workloads_on_both_transports_and_reports_no_lost_or_duplicate_runs() -> None:
    dbname = f"tmtest_bench_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, DATABASE_URL=services.dsn(dbname), AMQP_URL=services.amqp_url())
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "burst",
                "at",
                "pg-burst",
                "pg-at",
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
            timeout=180,
            env=env,
        )
    finally:
        await _drop_databases(dbname)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(line.get("system", "taskmill"), line["workload"], line["setup"]["transport"]) for line in lines] == [
        ("taskmill", "burst", "amqp"),
        ("taskmill", "at", "amqp"),
        ("taskmill-postgres", "burst", "postgres"),
        ("taskmill-postgres", "at", "postgres"),
    ]
    for burst in lines[0::2]:
        assert (burst["runs"], burst["lost"], burst["duplicates"]) == (300, 0, 0)
        assert burst["runs_per_s"] > 0
    for at in lines[1::2]:
        assert (at["runs"], at["lost"], at["duplicates"]) == (100, 0, 0)
        assert 0 <= at["lateness_ms"]["p50"] <= at["lateness_ms"]["max"]


def _run_bench(*argv: str, timeout: float = 90) -> list[dict[str, Any]]:
    """`python -m bench ARGV` in a database of its own (the references make theirs beside it, and drop them)."""
    dbname = f"tmtest_bench_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, DATABASE_URL=services.dsn(dbname), AMQP_URL=services.amqp_url())
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bench", *argv], capture_output=True, text=True, timeout=timeout, env=env
        )
    finally:
        asyncio.run(_drop_databases(dbname))
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


async def _drop_databases(dbname: str) -> None:
    admin = await asyncpg.connect(services.pg_admin())
    try:
        for name in (dbname, f"{dbname}_celery", f"{dbname}_pgqueuer", f"{dbname}_postgres"):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is missing: the references are the bench extra, in dev too: pip install -e '.[dev]'")


@pytest.mark.slow
@pytest.mark.parametrize("system", ["celery", "pgqueuer"])
def test_each_reference_runs_burst_and_at_and_reports_no_lost_or_duplicate_jobs(system: str) -> None:
    _require(system)
    lines = _run_bench(f"{system}-burst", f"{system}-at", "--runs", "50", "--at-runs", "20", "--at-ahead", "2")
    burst, at = lines
    keys = ("system", "workload", "runs", "lost", "duplicates")
    assert {k: burst[k] for k in keys} == {
        "system": system,
        "workload": "burst",
        "runs": 50,
        "lost": 0,
        "duplicates": 0,
    }
    assert burst["runs_per_s"] > 0 and burst["settings"]["workers"] == 2
    assert {k: at[k] for k in keys} == {"system": system, "workload": "at", "runs": 20, "lost": 0, "duplicates": 0}
    assert 0 <= at["lateness_ms"]["p50"] <= at["lateness_ms"]["max"]


def test_the_ratios_line_divides_each_taskmill_burst_rate_by_each_references_and_lists_the_at_p99s() -> None:
    lines: list[dict[str, Any]] = [
        {"workload": "burst", "runs_per_s": 3000},
        {"workload": "at", "lateness_ms": {"p99": 90.0}},
        {"system": "taskmill-postgres", "workload": "burst", "runs_per_s": 2400},
        {"system": "taskmill-postgres", "workload": "at", "lateness_ms": {"p99": 150.0}},
        {"system": "celery", "workload": "burst", "runs_per_s": 1000},
        {"system": "pgqueuer", "workload": "burst", "runs_per_s": 1500},
        {"system": "celery", "workload": "at", "lateness_ms": {"p99": 300.0}},
    ]
    assert references.ratios(lines) == {
        "workload": "ratios",
        "burst_runs_per_s": {"taskmill": 3000, "taskmill-postgres": 2400, "celery": 1000, "pgqueuer": 1500},
        "taskmill_burst_over": {"celery": 3.0, "pgqueuer": 2.0},
        "taskmill-postgres_burst_over": {"celery": 2.4, "pgqueuer": 1.6},
        "at_p99_ms": {"taskmill": 90.0, "taskmill-postgres": 150.0, "celery": 300.0},
    }
    assert references.ratios(lines[:4]) is None and references.ratios(lines[4:]) is None


@pytest.mark.slow
def test_the_workflow_workload_reports_its_level_rate_and_hand_offs_with_every_run_succeeded() -> None:
    (line,) = _run_bench(
        "workflow", "--workflow-width", "50", "--workflow-chain", "3", "--workflow-repeats", "2",
        "--processors", "1", "--concurrency", "50",
    )  # fmt: skip
    assert (line["workload"], line["steps"], line["repeats"], line["failed"]) == ("workflow", 55, 2, 0)
    assert line["wide_level_runs_per_s_median"] > 0
    assert 0 < line["handoff_ms"]["p50"] <= line["handoff_ms"]["max"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_scale_workload_runs_its_five_stacks_after_the_capacity_workload_without_a_deadlock() -> None:
    """As `make bench` runs them: the capacity workload leaves a thousand recurring tasks behind, and the scale
    workload's stacks used to TRUNCATE the tables under a scheduler expanding them and a distributor claiming
    (DeadlockDetectedError, two runs out of two)."""
    capacity, scale = _run_bench(
        "capacity", "scale", "--runs", "300", "--processors", "1", "--concurrency", "50",
        "--capacity-runs", "20000", "--capacity-results", "2000", timeout=280,
    )  # fmt: skip
    assert (capacity["workload"], capacity["lagging_tasks"]) == ("capacity", 1000)
    assert scale["workload"] == "scale"
    curve = [(p["distributors"], p["processors"], p["lost"], p["duplicates"]) for p in scale["curve"]]
    assert curve == [(1, 1, 0, 0), (1, 2, 0, 0), (1, 4, 0, 0), (2, 2, 0, 0), (2, 4, 0, 0)]
    assert all(p["runs_per_s"] > 0 for p in scale["curve"])
