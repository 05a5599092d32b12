"""Fixtures of the processor tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest

from taskmill.settings import Settings
from taskmill.topology import declare
from tests.processor.brokers import Broker


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = await declare(channel, settings)
        copies = await channel.declare_queue(exclusive=True)
        for task_type in ("command", "noop"):
            await copies.bind(topology.runs, routing_key=task_type)
        yield Broker(channel, topology, copies)
