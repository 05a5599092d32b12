"""Acknowledging deliveries in few frames: one `basic.ack multiple` covers a run of consecutive finished tags.

Deliveries finish out of order; a tag is acked alone when an earlier one is still running, so a long run never
holds back the acks (and so the prefetch window) of the short ones behind it.
"""

from __future__ import annotations

import asyncio
import logging

import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage

from taskmill.logs import described

log = logging.getLogger(__name__)

# What settling a delivery raises when its channel or connection has gone: the broker hands the message out again.
CHANNEL_GONE = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError)


_RECEIVED, _DONE, _SETTLED = range(3)


class _ChannelAcks:
    """The deliveries of one channel. Tags are consecutive from 1 on a channel that only this consumer uses."""

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.next_tag = 1  # every tag below this is acked or settled
        self.state: dict[int, int] = {}

    def acks_due(self) -> list[tuple[int, bool]]:
        """(tag, multiple) frames that ack every finished delivery.

        A multiple ack reaches back only over tags seen and settled: never over a delivery still running, or one
        the broker has sent but this process has not yet looked at.
        """
        frames: list[tuple[int, bool]] = []
        tag, last_done = self.next_tag, None
        while (state := self.state.get(tag)) in (_DONE, _SETTLED):
            del self.state[tag]
            if state == _DONE:
                last_done = tag
            tag += 1
        self.next_tag = tag
        if last_done is not None:
            frames.append((last_done, True))
        for tag, state in self.state.items():
            if state == _DONE:
                frames.append((tag, False))
                self.state[tag] = _SETTLED
        return frames


class Acker:
    def __init__(self) -> None:
        self._channels: dict[int, _ChannelAcks] = {}
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def received(self, delivery: AbstractIncomingMessage) -> None:
        self._mark(delivery, _RECEIVED)

    def done(self, delivery: AbstractIncomingMessage) -> None:
        """Marks a delivery finished; its ack goes out with the others finished in this loop iteration."""
        if self._mark(delivery, _DONE) and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def settled(self, delivery: AbstractIncomingMessage) -> None:
        """A delivery settled another way (nack): it no longer holds back the acks after it."""
        self._mark(delivery, _SETTLED)

    def _mark(self, delivery: AbstractIncomingMessage, state: int) -> bool:
        """False when the delivery's channel has closed: the broker hands its messages out again, and a copy whose
        run is recorded is dropped by the compare-and-set, so there is nothing left to ack."""
        try:
            channel = delivery.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            log.debug("delivery %s: its channel closed before it was settled", delivery.delivery_tag)
            return False
        self._acks(channel).state[delivery.delivery_tag or 0] = state
        return True

    def _acks(self, channel: aiormq.abc.AbstractChannel) -> _ChannelAcks:
        acks = self._channels.get(id(channel))
        if acks is None or acks.channel is not channel:
            # A channel reopened after a reconnect numbers its tags afresh; the old one's deliveries come again.
            self._channels = {k: v for k, v in self._channels.items() if not v.channel.is_closed}
            acks = self._channels[id(channel)] = _ChannelAcks(channel)
        return acks

    def _flush(self) -> None:
        self._scheduled = False
        for acks in list(self._channels.values()):
            if acks.channel.is_closed:
                acks.state.clear()
                continue
            for tag, multiple in acks.acks_due():
                task = asyncio.ensure_future(self._send(acks.channel, tag, multiple))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Sends every ack still due and waits until they are written."""
        self._flush()
        await asyncio.gather(*self._sending, return_exceptions=True)

    @staticmethod
    async def _send(channel: aiormq.abc.AbstractChannel, tag: int, multiple: bool) -> None:
        try:
            await channel.basic_ack(tag, multiple=multiple)
        except Exception as exc:  # the channel closed: the broker redelivers, the database dedupes
            log.warning("ack of delivery %s failed: %s", tag, described(exc))
