"""The state an attempt leaves its run in: retries are spent by failed attempts, never by lost processors."""

from __future__ import annotations

import pytest

from processor.execute import Attempt
from processor.record import decide
from taskmill.messages import RunMessage
from taskmill.states import RunState
from tests.helpers import run_message

OK = Attempt(True, {}, None, 1.0)
FAILED = Attempt(False, None, "exit code 1", 1.0)
REFUSED = Attempt(False, None, "host refused", 1.0, permanent=True)


def message(attempt: int, max_retries: int, lost: int = 0) -> RunMessage:
    return run_message(attempt=attempt, max_retries=max_retries, lost=lost)


@pytest.mark.parametrize(
    ("attempt", "max_retries", "lost", "outcome", "state"),
    [
        (1, 0, 0, OK, RunState.SUCCEEDED),
        (1, 0, 0, FAILED, RunState.FAILED),  # no retries asked for: failed, not dead
        (1, 2, 0, FAILED, RunState.RETRYING),
        (2, 2, 0, FAILED, RunState.RETRYING),  # the first retry failed: one is left
        (3, 2, 0, FAILED, RunState.DEAD),  # the second retry failed: retries spent
        (1, 2, 0, REFUSED, RunState.DEAD),  # another attempt cannot do better
        # Attempts 1 and 2 were lost with their processors: attempt 3 is the run's first real try.
        (3, 0, 2, FAILED, RunState.FAILED),
        (3, 1, 2, FAILED, RunState.RETRYING),
        (4, 1, 2, FAILED, RunState.DEAD),
        (2, 0, 1, OK, RunState.SUCCEEDED),
    ],
)
def test_only_failed_attempts_spend_the_retries(
    attempt: int, max_retries: int, lost: int, outcome: Attempt, state: RunState
) -> None:
    assert decide(message(attempt, max_retries, lost), outcome) is state


def test_a_message_without_lost_reads_as_no_loss_and_keeps_its_wire_keys() -> None:
    body = message(1, 0).wire()
    assert b'"timeout_s":30.0' in body and b'"retry_delay_s":1.0' in body and b'"lost":0' in body
    old = body.replace(b',"lost":0', b"")  # as queued by a distributor before `lost` was added
    assert RunMessage.model_validate_json(old).lost == 0
