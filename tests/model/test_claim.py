"""The model-based test of the pipeline's database half (tests/model/claim_machine.py): random sequences of what users,
operators, the scheduler, the distributor, the rescuer and processors do, on a clock the test moves.

The short budget runs with the suite; `make soak` runs the long one (TASKMILL_MODEL_BUDGET=long). A failure prints the
shrunk sequence of steps; each one found is kept in tests/model/test_regressions.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from hypothesis.stateful import run_state_machine_as_test

from taskmill.db import connect, create_pool
from taskmill.settings import Settings
from tests.conftest import isolated_settings
from tests.model import clock
from tests.model.claim_machine import ClaimMachine, Loop

# (examples, steps per example): the short budget takes about 10 s alone here, minutes under a loaded suite.
BUDGETS = {"short": (30, 30), "long": (1500, 60)}
BUDGET = os.environ.get("TASKMILL_MODEL_BUDGET", "short")


@pytest.fixture
def machine(template_db: str) -> Iterator[type[ClaimMachine]]:
    loop = Loop()
    isolated = isolated_settings(template_db)
    settings = loop.run(isolated.__aenter__())

    async def prepare() -> None:
        conn = await connect(settings.database_url)
        try:
            await clock.install(conn, datetime.now(UTC))
        finally:
            await conn.close()
        ClaimMachine.pool = await create_pool(settings.database_url, max_size=2)

    loop.run(prepare())
    ClaimMachine.loop, ClaimMachine.examples = loop, 0
    ClaimMachine.settings = Settings(database_url=settings.database_url)
    try:
        yield ClaimMachine
    finally:
        loop.run(ClaimMachine.pool.close())
        loop.run(isolated.__aexit__(None, None, None))
        loop.close()


@pytest.mark.timeout(300 if BUDGET == "short" else 0)
def test_the_claim_keeps_every_promise_whatever_users_operators_and_processors_do(
    machine: type[ClaimMachine],
) -> None:
    examples, steps = BUDGETS[BUDGET]
    run_state_machine_as_test(
        machine,
        settings=hypothesis_settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            # No explain phase: its tracer made a shrink take over five minutes (the whole budget) in a loaded suite.
            phases=[Phase.generate, Phase.target, Phase.shrink],
            # No example database: a failure's shrunk steps are printed and kept as a regression test instead.
            database=None,
        ),
    )
    print(f"examples run: {machine.examples}")
