"""The roles model (tests/model/roles_machine.py): random sequences of what users, operators and faults do, against
the real roles and the real API, with the invariants checked after every step and at the end of each example.

Two budgets, chosen by TASKMILL_MODEL_BUDGET:
- `short` (the default, in `make test`): a few short examples, about a minute with the stack's start. A failure is
  printed unshrunk (shrinking real-time examples takes minutes): the steps Hypothesis prints replay it.
- `long` (`make soak`): TASKMILL_MODEL_EXAMPLES examples (default 25) of up to 30 steps, shrunk on failure, broker
  restarts among the faults (on a private RabbitMQ node). About 12 s an example:

      TASKMILL_MODEL_BUDGET=long .venv/bin/pytest tests/model/test_roles.py -s

Hypothesis's example database is off: its examples depend on real time and real processes, and replaying one
later would not replay what happened.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, Verbosity
from hypothesis import settings as hypothesis_settings
from hypothesis.stateful import run_state_machine_as_test

# rabbit_node: the private RabbitMQ node, asked for only by the budget that restarts the broker.
from tests.faults.servers import RabbitNode, rabbit_node  # noqa: F401
from tests.model.roles_machine import BackgroundLoop, RolesMachine, Spec, World, machine_for, opened_world


@dataclass(frozen=True)
class Budget:
    examples: int
    steps: int
    broker_restarts: bool
    shrink: bool
    timeout_s: int

    def hypothesis(self) -> hypothesis_settings:
        phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if self.shrink else [])
        return hypothesis_settings(
            max_examples=self.examples,
            stateful_step_count=self.steps,
            deadline=None,
            database=None,
            phases=phases,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
            verbosity=Verbosity.debug if os.environ.get("TASKMILL_MODEL_VERBOSE") else Verbosity.normal,
        )


def budget() -> Budget:
    if os.environ.get("TASKMILL_MODEL_BUDGET", "short") == "long":
        examples = int(os.environ.get("TASKMILL_MODEL_EXAMPLES", "25"))
        return Budget(examples, 30, broker_restarts=True, shrink=True, timeout_s=600 + 120 * examples)
    return Budget(4, 10, broker_restarts=False, shrink=False, timeout_s=240)


BUDGET = budget()


@pytest.fixture
def world(template_db: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[World, BackgroundLoop]]:
    """The stack, in a loop of its own thread, for the whole test; on the private broker node when the budget
    restarts the broker."""
    node: RabbitNode | None = request.getfixturevalue("rabbit_node") if BUDGET.broker_restarts else None
    loop = BackgroundLoop()
    opened = opened_world(template_db, tmp_path, node)
    try:
        yield loop.run(opened.__aenter__(), timeout=180), loop
    finally:
        try:
            loop.run(opened.__aexit__(None, None, None), timeout=180)
        finally:
            loop.close()


@pytest.mark.slow
@pytest.mark.timeout(BUDGET.timeout_s)
def test_roles_keep_their_promises_under_random_use_and_faults(world: tuple[World, BackgroundLoop]) -> None:
    machine = machine_for(*world, broker_restarts=BUDGET.broker_restarts)
    run_state_machine_as_test(machine, settings=BUDGET.hypothesis())


def replay(world: tuple[World, BackgroundLoop], steps: Callable[[RolesMachine], None]) -> None:
    """A sequence of the machine's steps as a plain test (a shrunk failure, kept): the invariants after each step are
    the caller's `state.holds()` calls, as Hypothesis prints them; the end-of-example checks run at the end."""
    state = machine_for(*world, broker_restarts=False)()
    try:
        steps(state)
    finally:
        state.teardown()


# -- shrunk failures, kept --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_edit_into_a_once_task_keeps_the_due_occurrences_of_the_interval_it_ends(
    world: tuple[World, BackgroundLoop],
) -> None:
    def steps(state: RolesMachine) -> None:
        # Each run fails once and is retried: it takes longer than the interval, so queue_one holds the next one.
        slow = Spec(kind="interval", seconds=1, delay_ms=400, fail_first=1, max_retries=1, overlap="queue_one")
        state.create_tasks(first=[slow])
        state.holds()
        state.wait_longer(seconds=3.0)
        state.holds()
        state.edit_task(which=0, spec=Spec(kind="once", seconds=2))
        state.holds()
        state.wait_longer(seconds=3.0)
        state.holds()

    replay(world, steps)
