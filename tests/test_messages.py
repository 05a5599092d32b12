"""The run message: its retry arithmetic (exponential, capped, never an overflow), and its route read from its body."""

from __future__ import annotations

import aio_pika

from taskmill.messages import MAX_RETRY_DELAY_S, RunMessage, batch_body, route_of
from taskmill.settings import Settings
from taskmill.topology import Names, declare_delay_queue
from tests.helpers import run_message


def message(attempt: int, delay_s: float, backoff: float) -> RunMessage:
    return run_message(attempt=attempt, max_retries=100, retry_delay_seconds=delay_s, backoff=backoff)


def test_the_wait_grows_by_the_backoff_with_each_attempt() -> None:
    assert [message(n, 1.5, 2).retry_delay_ms() for n in (1, 2, 3, 4)] == [1500, 3000, 6000, 12_000]
    assert message(1, 0, 1).retry_delay_ms() == 1  # never zero: a TTL of 0 would skip the delay queue's wait


def test_the_wait_is_capped_at_a_day_however_large_the_backoff_grows() -> None:
    cap_ms = round(MAX_RETRY_DELAY_S * 1000)
    assert message(50, 10, 10).retry_delay_ms() == cap_ms
    assert message(2**31 - 1, 86_400, 1e300).retry_delay_ms() == cap_ms  # 1e300 ** huge overflows a float


async def test_the_broker_takes_the_longest_wait_as_a_delay_queue_ttl(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        names = Names(settings.broker_prefix)
        delay_ms = message(100, 10, 10).retry_delay_ms()
        queue = await declare_delay_queue(await channel.get_underlay_channel(), names, delay_ms, "noop")
        await channel.queue_delete(queue)
    finally:
        await connection.close()


def test_the_route_of_a_message_is_its_type_and_priority_whatever_its_version() -> None:
    assert route_of(run_message(type="sleep", priority=3).wire()) == ("sleep", 3)
    assert route_of(b'{"v":1,"type":"noop"}') == ("noop", 0)  # a message of before priorities
    batch = batch_body([run_message(run_id=n, type="http", priority=9).wire() for n in (1, 2)])
    assert route_of(batch) == ("http", 9)


def test_a_body_that_does_not_say_its_type_and_priority_has_no_route() -> None:
    for body in (
        b"not json",
        b"[]",
        b'{"v":2,"runs":[]}',
        b'{"v":1}',
        b'{"v":1,"type":7}',
        b'{"type":"x","priority":10}',
    ):
        assert route_of(body) is None, body
