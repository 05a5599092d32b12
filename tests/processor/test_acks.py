from __future__ import annotations

from typing import cast

import aiormq.abc

from processor.acks import _DONE, _RECEIVED, _SETTLED, _ChannelAcks


def acks(states: dict[int, int]) -> _ChannelAcks:
    a = _ChannelAcks(cast(aiormq.abc.AbstractChannel, object()))
    a.state = dict(states)
    return a


def test_consecutive_finished_deliveries_are_acked_in_one_frame() -> None:
    a = acks({1: _DONE, 2: _DONE, 3: _DONE})
    assert a.acks_due() == [(3, True)]
    assert a.next_tag == 4 and a.state == {}


def test_a_running_delivery_stops_the_multiple_ack_and_later_ones_go_alone() -> None:
    a = acks({1: _DONE, 2: _RECEIVED, 3: _DONE, 4: _DONE})
    assert a.acks_due() == [(1, True), (3, False), (4, False)]
    assert a.acks_due() == []  # nothing twice
    a.state[2] = _DONE
    assert a.acks_due() == [(2, True)]  # reaches over 3 and 4, already acked alone
    assert a.next_tag == 5 and a.state == {}


def test_a_multiple_ack_never_reaches_over_a_delivery_not_yet_seen() -> None:
    a = acks({1: _DONE, 3: _DONE})  # tag 2 is on its way to us
    assert a.acks_due() == [(1, True), (3, False)]
    assert a.next_tag == 2


def test_a_requeued_delivery_does_not_hold_back_the_acks_after_it() -> None:
    a = acks({1: _SETTLED, 2: _DONE})
    assert a.acks_due() == [(2, True)]
    b = acks({1: _SETTLED})
    assert b.acks_due() == [] and b.next_tag == 2
