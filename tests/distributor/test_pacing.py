"""When the dispatch loop claims again (distributor/pacing.py)."""

from __future__ import annotations

from distributor.pacing import BUSY_RETRY_S, Pace, pace

IDLE = 30.0


def test_a_claim_that_took_runs_is_followed_by_another_at_once() -> None:
    assert pace(1000, None, False, IDLE) == Pace(0.0, False)
    assert pace(3, None, True, IDLE) == Pace(0.0, False)


def test_with_nothing_scheduled_the_loop_idles_until_a_notify_or_the_idle_cap() -> None:
    assert pace(0, None, False, IDLE) == Pace(IDLE, False)


def test_it_sleeps_until_the_next_run_falls_due_but_never_past_the_idle_cap() -> None:
    assert pace(0, 2.5, False, IDLE) == Pace(2.5, False)
    assert pace(0, 3600.0, False, IDLE) == Pace(IDLE, False)


def test_a_run_that_fell_due_meanwhile_is_claimed_at_once_then_an_unclaimable_one_is_polled_gently() -> None:
    first = pace(0, -0.01, False, IDLE)
    assert first == Pace(0.0, True)
    # Still overdue yet the claim takes nothing: another replica holds it, or it waits out a revert's backoff.
    assert pace(0, -0.01, first.missed, IDLE) == Pace(BUSY_RETRY_S, True)
    assert pace(0, 5.0, True, IDLE) == Pace(5.0, False)
