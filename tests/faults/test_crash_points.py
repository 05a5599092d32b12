"""A role SIGKILLs itself at each crash point (taskmill/crash.py); the run still ends in exactly one terminal state.

Each case: the crashing replica works alone until it dies at its point; the state it leaves is checked (for the
processor: the delivery went back to the queue, so nothing was acked before it was recorded); then a healthy
replica takes over, and once nothing moves every invariant must hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import pytest

from tests.faults.harness import Stack
from tests.helpers import new_task

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    role: str  # the role that crashes
    crash: str  # TASKMILL_CRASH_AT
    left: str  # the run's status right after the crash
    final: str
    attempts: int
    modes: dict[str, int] = field(default_factory=dict)  # how the target answers (tests/faults/target.py)
    repeated: bool = False  # the side effect happens twice: the crash came after it, before it was recorded


CASES = {
    # Claimed and committed as queued, never published: the rescuer republishes once the queued lease ends.
    "distributor-after-queued": Case("distributor", "after_queued", "queued", "succeeded", 1),
    # Published and confirmed, nothing else recorded: the processors run it as usual.
    "distributor-after-publish": Case("distributor", "after_publish", "", "succeeded", 1),
    # Called the target, died before recording: the copy redelivered finds it running and is dropped; the rescuer
    # hands the run on when its lease ends, and the second attempt calls again under the same key.
    "processor-after-side-effect": Case("processor", "after_side_effect", "running", "succeeded", 2, repeated=True),
    # Recorded succeeded, died before the ack: the redelivery is dropped.
    "processor-after-record": Case("processor", "after_record", "succeeded", "succeeded", 1),
    # Recorded retrying, died before publishing the retry: the retry lease brings it back through the rescuer.
    "processor-after-record-retrying": Case(
        "processor", "after_record", "retrying", "succeeded", 2, modes={"fail_first": 1}
    ),
    # Recorded retrying and published the retry, died before the ack: the retry runs, the redelivery is stale.
    "processor-after-publish-retrying": Case(
        "processor", "after_publish", "retrying", "succeeded", 2, modes={"fail_first": 1}
    ),
    # The second attempt fails too: recorded dead and dead-lettered, died before the ack. One dead letter.
    "processor-after-publish-dead": Case("processor", "after_publish:2", "dead", "dead", 2, modes={"status": 500}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_role_killed_at_a_crash_point_loses_no_run_and_runs_it_to_one_end(
    stack: Stack, db: asyncpg.Connection, case: Case
) -> None:
    crasher = await stack.add(case.role, crash=case.crash)  # the only one of its role, started beside the other
    if case.role == "distributor":
        await stack.start(processor=1)
    else:
        await stack.start(distributor=1)
    task = await new_task(
        db,
        "crash",
        "http",
        stack.target.payload("crash", **case.modes),
        max_retries=1,
        retry_delay_seconds=0.5,
        timeout_seconds=2,  # a lost attempt's lease ends 2 + 1 s after it started
    )
    await crasher.died_at(case.crash.partition(":")[0])

    run = await stack.run_of(task.id)
    if case.left:
        assert run["status"] == case.left, dict(run)
    if case.role == "processor":
        # The delivery in hand when it died was not acked: it is back in the queue, whatever was recorded.
        await stack.wait_ready_messages(stack.broker.names.work_queue, at_least=1)
    elif case.crash == "after_queued":
        assert await stack.broker.ready(stack.broker.names.work_queue) == 0  # nothing was published

    await stack.add(case.role)
    await stack.quiesce()
    report = await stack.check({task.id: 1}, repeats_allowed={run["id"]} if case.repeated else ())
    final = await stack.run_of(task.id)
    assert (final["status"], final["attempt"]) == (case.final, case.attempts), dict(final)
    assert report.repeats == ({run["id"]: 2} if case.repeated else {})
    # The target saw every attempt, each under the run's id, and nothing else.
    calls = stack.target.calls_to("crash")
    assert {c.key for c in calls} == {str(run["id"])}
    assert len(calls) == case.attempts
