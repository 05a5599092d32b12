"""What the model-based test (tests/model/test_claim.py) found, each as the shrunk sequence of steps it printed,
replayed as plain calls on the machine: each failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskmill.models import Schedule
from taskmill.states import ScheduleKind
from taskmill.store import runs as store_runs
from taskmill.store.runs import Outbound
from tests.model.claim_machine import ClaimMachine
from tests.model.test_claim import machine  # noqa: F401 (the fixture)


def spec(schedule: Schedule, **fields: Any) -> dict[str, Any]:
    drawn: dict[str, Any] = {
        "schedule": schedule,
        "overlap": "allow",
        "max_concurrency": None,
        "concurrency_key": None,
        "misfire": "skip",
        "misfire_grace_seconds": 15,
        "catchup_window_seconds": 120,
        "priority": 0,
        "active": True,
    }
    return drawn | fields


EVERY_20 = Schedule(kind=ScheduleKind.INTERVAL, every_seconds=20)


@pytest.fixture
def state(machine: type[ClaimMachine]) -> Iterator[ClaimMachine]:  # noqa: F811
    s = machine()
    s.fresh_database()
    yield s


def test_a_deleted_task_leaves_only_the_occurrences_of_its_definition(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20))
    state.advance(seconds=61)
    state.delete(pick=0)
    state.consistent()
    state.teardown()


def test_a_paused_task_is_handed_out_none_of_the_runs_that_fell_due_before_the_pause(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20))
    state.schedule()
    state.advance(seconds=61)
    state.schedule()
    state.pause_or_resume(pick=0, active=False)
    state.claim(batch=100)
    state.consistent()
    skipped = state.fetch("SELECT error FROM task_schedule WHERE status = 'skipped'")
    assert [r["error"] for r in skipped] == ["skipped: its task was paused before it was handed out"] * 3
    state.teardown()


def test_a_task_made_paused_by_an_edit_is_handed_out_none_of_the_runs_due_before_it(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20))
    state.advance(seconds=61)
    state.edit(pick=0, drawn=spec(EVERY_20, active=False))
    state.claim(batch=100)
    state.consistent()
    state.teardown()


def test_an_edit_into_a_once_task_keeps_the_due_occurrences_of_the_schedule_it_ends(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20))
    state.schedule()
    state.advance(seconds=61)
    state.edit(pick=0, drawn=spec(("once", 100)))  # type: ignore[arg-type]
    state.consistent()
    state.teardown()


def test_an_edit_of_a_one_off_into_once_keeps_what_the_recurring_schedule_before_it_owed(state: ClaimMachine) -> None:
    # interval -> immediate kept the three due occurrences; immediate -> once dropped every scheduled run of the
    # task as the one-off's, those three with them (found by a full run of the suite, 2026-12-07).
    state.create(drawn=spec(EVERY_20))
    state.advance(seconds=61)
    state.edit(pick=0, drawn=spec(Schedule(kind=ScheduleKind.IMMEDIATE)))
    state.consistent()
    state.edit(pick=0, drawn=spec(("once", 0)))  # type: ignore[arg-type]
    state.consistent()
    state.teardown()


# -- found by the first version of the model (commits e442415, 014787d, ac214de) -------------------------------

# Never missed in these: every occurrence is handed out, so the overlap policy alone decides.
PATIENT = {"misfire": "all", "misfire_grace_seconds": 600}


def test_an_occurrence_whose_publish_failed_goes_before_the_later_ones(state: ClaimMachine) -> None:
    # Found first as a later occurrence handed out while the earlier one waited out its backoff, which then ran
    # beside it; then, with real roles, as two distributors each taking one of them at once (see below).
    state.create(drawn=spec(EVERY_20, overlap="skip", **PATIENT))
    state.schedule()
    state.advance(seconds=21)
    state.claim(batch=100)  # the first occurrence
    state.publish_fails(pick=0, backoff=30)  # back to the claim in 30 s
    state.advance(seconds=20)
    state.claim(batch=100)  # the second waits for the first
    assert state.fetch("SELECT status::text AS s FROM task_schedule WHERE id = 2")[0]["s"] == "scheduled"
    state.advance(seconds=20)
    state.claim(batch=100)  # the first goes; the second and third, due with it, are skipped (overlap skip)
    state.consistent()
    rows = state.fetch("SELECT id, status::text AS status FROM task_schedule WHERE id <= 3 ORDER BY id")
    assert [r["status"] for r in rows] == ["queued", "skipped", "skipped"]
    state.teardown()


def test_two_claims_at_once_never_hand_out_two_occurrences_of_a_task_that_allows_no_overlap(
    state: ClaimMachine,
) -> None:
    state.create(drawn=spec(EVERY_20, overlap="queue_one", **PATIENT))
    state.schedule()
    state.advance(seconds=41)  # two occurrences due

    async def race() -> tuple[list[int], list[int]]:
        async with state.pool.acquire() as a, state.pool.acquire() as b:
            async with a.transaction():
                first = await store_runs.claim_due(a, 1, 30, 0.0, None)  # takes the first, not committed yet
                async with b.transaction():
                    second = await store_runs.claim_due(b, 100, 30, 0.0, None)  # skips the locked first
            return [o.run_id for o in first], [o.run_id for o in second]

    assert state.run(race()) == ([1], [])
    state.consistent()
    state.teardown()


def test_a_cancelled_occurrence_is_not_taken_for_the_previous_run_by_an_overlap_policy(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20, overlap="skip", **PATIENT))
    state.schedule()
    state.advance(seconds=21)
    state.claim(batch=100)
    state.deliver(pick=0, keep=False)  # run 1 runs
    state.advance(seconds=20)
    state.cancel(pick=1)  # run 2, never handed out, cancelled
    state.advance(seconds=20)
    state.claim(batch=100)  # run 3: run 1 still runs
    state.consistent()
    state.teardown()


def test_tasks_sharing_a_key_are_each_held_to_their_own_cap(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20, max_concurrency=1, concurrency_key="shared-a", **PATIENT))  # task 1: runs 1-5
    state.create(drawn=spec(EVERY_20, max_concurrency=2, concurrency_key="shared-a", **PATIENT))  # task 2: runs 6-
    state.schedule()
    state.advance(seconds=21)
    state.claim(batch=100)  # one of each: two in flight
    state.advance(seconds=20)
    state.claim(batch=100)  # none: task 1 is at its cap of 1, task 2 at its 2; both held a second
    state.deliver(pick=0, keep=False)
    state.finish(pick=0, outcome="succeeded")  # task 1's run ends: one in flight
    state.advance(seconds=1)
    state.claim(batch=100)  # task 1's next is held (1 in flight, its cap 1); task 2's next fits under its cap of 2
    state.consistent()
    queued = state.fetch("SELECT task_id FROM task_schedule WHERE status = 'queued' ORDER BY id")
    assert [r["task_id"] for r in queued] == [2, 2]  # the held run of task 1 took no room from task 2
    state.teardown()


def test_an_edit_records_the_occurrences_no_scheduler_had_made(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20))
    state.advance(seconds=61)  # no scheduler ran
    state.edit(pick=0, drawn=spec(Schedule(kind=ScheduleKind.INTERVAL, every_seconds=45)))
    state.consistent()
    recorded = state.fetch("SELECT count(*) AS n FROM task_schedule WHERE scheduled_time <= $1", state.now)
    assert recorded[0]["n"] == 3
    state.teardown()


def test_a_run_that_replaces_its_previous_one_takes_the_slot_under_its_key(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20, overlap="cancel_previous", max_concurrency=1, **PATIENT))
    state.schedule()
    state.advance(seconds=21)
    state.claim(batch=100)
    state.deliver(pick=0, keep=False)
    state.advance(seconds=20)
    state.claim(batch=100)  # run 2 replaces run 1, cancelled
    state.consistent()  # the key's slot count is the runs in flight under it
    assert state.fetch("SELECT concurrency_key FROM task_schedule WHERE id = 2")[0]["concurrency_key"] is not None
    state.teardown()


def test_a_dead_letter_refused_is_owed_until_one_is_confirmed(state: ClaimMachine) -> None:
    state.create(drawn=spec(Schedule(kind=ScheduleKind.IMMEDIATE)))
    state.claim(batch=100)
    state.deliver(pick=0, keep=False)
    state.finish(pick=0, outcome="dead")
    state.dead_letter(confirmed=False)  # the broker refused it
    state.advance(seconds=1)
    owed = state.run(rescue_dead_letters(state))
    assert [(o.run_id, o.reason) for o in owed] == [(1, "model")]
    state.teardown()


async def rescue_dead_letters(state: ClaimMachine) -> list[Outbound]:
    async with state.pool.acquire() as conn:
        return await store_runs.rescue_dead_letters(conn, 10, 30)


# -- found by this version (the long budget) -------------------------------------------------------------------


def test_a_run_whose_publish_fails_after_its_task_was_paused_is_held_not_handed_out(state: ClaimMachine) -> None:
    state.create(drawn=spec(Schedule(kind=ScheduleKind.IMMEDIATE)))
    state.claim(batch=1)
    state.pause_or_resume(pick=0, active=False)
    state.publish_fails(pick=0, backoff=0)  # back to scheduled, its task paused meanwhile
    state.claim(batch=3)
    state.consistent()
    held = state.fetch("SELECT status::text AS status, lease_until = 'infinity' AS held FROM task_schedule")
    assert [(r["status"], r["held"]) for r in held] == [("scheduled", True)]
    state.pause_or_resume(pick=0, active=True)  # resumed: it goes
    state.claim(batch=3)
    assert state.fetch("SELECT status::text AS status FROM task_schedule")[0]["status"] == "queued"
    state.teardown()


def test_a_recurring_run_whose_publish_fails_after_a_pause_is_skipped(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20))
    state.schedule()
    state.advance(seconds=21)
    state.claim(batch=1)
    state.pause_or_resume(pick=0, active=False)
    state.publish_fails(pick=0, backoff=0)
    state.claim(batch=3)
    state.consistent()
    first = state.fetch("SELECT status::text AS status, error FROM task_schedule WHERE id = 1")[0]
    assert (first["status"], first["error"]) == ("skipped", "skipped: its task was paused before it was handed out")
    state.teardown()


def test_a_run_whose_publish_fails_after_its_task_was_deleted_is_cancelled(state: ClaimMachine) -> None:
    state.create(drawn=spec(Schedule(kind=ScheduleKind.IMMEDIATE)))
    state.claim(batch=1)
    state.delete(pick=0)
    state.publish_fails(pick=0, backoff=0)
    state.claim(batch=3)
    state.consistent()
    first = state.fetch("SELECT status::text AS status, error FROM task_schedule WHERE id = 1")[0]
    assert (first["status"], first["error"]) == ("cancelled", "cancelled: its task was deleted")
    state.teardown()


def test_a_future_run_an_operator_cancelled_stays_when_an_edit_drops_the_rest(state: ClaimMachine) -> None:
    state.create(drawn=spec(EVERY_20))
    state.schedule()
    state.cancel(pick=0)
    state.edit(pick=0, drawn=spec(Schedule(kind=ScheduleKind.INTERVAL, every_seconds=45)))
    state.teardown()


def test_a_workflow_run_whose_step_was_cancelled_ends_cancelled_not_succeeded(state: ClaimMachine) -> None:
    state.invoke_workflow(second_fails_on=False)
    state.cancel(pick=0)  # step a; b and c, which depend on it, end skipped
    state.teardown()
    assert state.fetch("SELECT status FROM workflow_runs")[0]["status"] == "cancelled"


def _occurrences_held_by_a_paused_one_off(state: ClaimMachine) -> None:
    """A recurring task whose due occurrences an edit recorded (no scheduler had made them), then edited into a paused
    immediate task: those occurrences are not its one-off run."""
    state.create(drawn=spec(EVERY_20))
    state.advance(seconds=100)
    state.edit(pick=0, drawn=spec(EVERY_20))
    state.edit(pick=0, drawn=spec(Schedule(kind=ScheduleKind.IMMEDIATE), active=False))
    state.advance(seconds=1)


def test_occurrences_owed_before_a_task_became_a_paused_one_off_stay_when_it_is_made_recurring_again(
    state: ClaimMachine,
) -> None:
    _occurrences_held_by_a_paused_one_off(state)
    state.edit(pick=0, drawn=spec(EVERY_20))
    state.consistent()
    state.teardown()


def test_occurrences_owed_before_a_task_became_a_paused_one_off_are_not_left_held_once_it_is_an_active_once_task(
    state: ClaimMachine,
) -> None:
    _occurrences_held_by_a_paused_one_off(state)
    state.edit(pick=0, drawn=spec(("once", 180), misfire="all", misfire_grace_seconds=600))  # type: ignore[arg-type]
    state.consistent()
    state.teardown()
