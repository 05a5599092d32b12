"""Acknowledging deliveries in few frames: one `basic.ack multiple` covers a run of consecutive finished tags.

Deliveries finish out of order; a tag is acked alone only when an earlier one is still running, so a long run
never holds back the acks (and so the prefetch window) of the short ones behind it.
"""

from __future__ import annotations

import asyncio
import logging

import aiormq.abc
from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger(__name__)


class _ChannelAcks:
    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.outstanding: dict[int, bool] = {}  # delivery tag -> finished, in delivery order

    def acks_due(self) -> list[tuple[int, bool]]:
        """(tag, multiple) pairs that ack every finished delivery, consecutive ones in one frame."""
        frames: list[tuple[int, bool]] = []
        prefix_end = None
        for tag, done in self.outstanding.items():
            if not done:
                break
            prefix_end = tag
        if prefix_end is not None:
            frames.append((prefix_end, True))
            for tag in [t for t in self.outstanding if t <= prefix_end]:
                del self.outstanding[tag]
        for tag in [t for t, done in self.outstanding.items() if done]:
            frames.append((tag, False))
            del self.outstanding[tag]
        return frames


class Acker:
    def __init__(self) -> None:
        self._channels: dict[int, _ChannelAcks] = {}
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def received(self, delivery: AbstractIncomingMessage) -> None:
        self._acks(delivery).outstanding[delivery.delivery_tag or 0] = False

    def done(self, delivery: AbstractIncomingMessage) -> None:
        """Marks a delivery finished; its ack goes out with the others finished in this loop iteration."""
        acks = self._acks(delivery)
        acks.outstanding[delivery.delivery_tag or 0] = True
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def forget(self, delivery: AbstractIncomingMessage) -> None:
        """A delivery settled another way (nack): it no longer blocks the consecutive run."""
        self._acks(delivery).outstanding.pop(delivery.delivery_tag or 0, None)

    def _acks(self, delivery: AbstractIncomingMessage) -> _ChannelAcks:
        channel = delivery.channel
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
                acks.outstanding.clear()
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
            log.warning("ack of delivery %s failed: %s", tag, exc)
