"""When the dispatch loop claims next: at once while runs keep coming, else when the next one falls due (or a
NOTIFY says something changed), never later than `max_idle_s`. A pure function, tested on its own."""

from __future__ import annotations

from dataclasses import dataclass

# Overdue runs that a claim cannot take (another replica holds them, or they wait out a revert's backoff) are
# looked at again this often, not in a tight loop.
BUSY_RETRY_S = 0.2


@dataclass(frozen=True, slots=True)
class Pace:
    wait_s: float  # before the next claim; 0 is at once
    missed: bool  # this claim found nothing although a run was overdue


def pace(claimed: int, due_in: float | None, missed: bool, max_idle_s: float) -> Pace:
    """The wait after a claim that took `claimed` runs. `due_in`: seconds until the next scheduled run is within
    the dispatch lead (negative when overdue, None when nothing is scheduled), asked only when the claim took
    nothing. `missed`: what the previous call returned."""
    if claimed:
        return Pace(0.0, False)  # more may be due: claim again while this batch publishes
    if due_in is None:
        return Pace(max_idle_s, False)
    if due_in > 0:
        return Pace(min(due_in, max_idle_s), False)
    if not missed:
        return Pace(0.0, True)  # fell due between the claim and the look at the next due time: claim again
    return Pace(BUSY_RETRY_S, True)
