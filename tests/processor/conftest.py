"""Fixtures of the processor tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import pytest

from taskmill.settings import Settings
from taskmill.topology import declare
from tests.processor.brokers import Broker, QueueRows


@asynccontextmanager
async def _tapped_broker(settings: Settings) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = await declare(channel, settings)
        copies = await channel.declare_queue(exclusive=True)
        for task_type in ("command", "noop"):
            await copies.bind(topology.runs, routing_key=task_type)
        yield Broker(channel, topology, copies)


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    async with _tapped_broker(settings) as tapped:
        yield tapped


@pytest.fixture
async def copies(settings: Settings) -> AsyncIterator[Broker | QueueRows]:
    """Copies of what the distributor publishes, over the test's transport."""
    if settings.transport_name == "postgres":
        yield QueueRows(settings.database_url)
        return
    async with _tapped_broker(settings) as tapped:
        yield tapped
