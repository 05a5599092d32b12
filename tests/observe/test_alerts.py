"""Dead-run alerts (taskmill/alerts.py): one JSON POST per dead run to TASKMILL_ALERT_WEBHOOK_URL, tried again on
failure with the same idempotency key; from a real processor, for a run that spent its retries, and from the
distributor's rescuer, for a run that lost too many processors (counted in the metrics by whichever recorded it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import httpx

from taskmill.alerts import Alerter
from tests.faults.harness import Stack
from tests.helpers import free_port, new_task, wait_until
from tests.observe.scrape import scrape, value
from tests.processor.http_targets import Target


@dataclass(slots=True)
class Hook:
    """A webhook receiver on 127.0.0.1 answering each POST with the next of `statuses` (then 200)."""

    statuses: list[int] = field(default_factory=list)
    port: int = 0
    posts: list[tuple[dict[str, str], dict[str, object]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.posts.append((headers, json.loads(body)))
                status = self.statuses.pop(0) if self.statuses else 200
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def hook(*statuses: int) -> AsyncIterator[Hook]:
    receiver = Hook(list(statuses))
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    async with server:
        yield receiver


async def test_a_failed_post_is_tried_again_with_the_same_key_and_a_refused_one_is_not() -> None:
    when = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    async with hook(503, 502) as flaky, hook(400) as refusing:
        for receiver, run_id in ((flaky, 42), (refusing, 43)):
            alerter = Alerter(receiver.url, delays_s=(0.05, 0.05, 0.05))
            alerter.dead(run_id, 7, "http", 3, when, "unexpected HTTP status 500")
            await alerter.close(wait_s=5)
    assert len(flaky.posts) == 3  # two failures, then taken
    assert {headers["idempotency-key"] for headers, _ in flaky.posts} == {"dead-42-3"}
    alert = flaky.posts[-1][1]
    assert alert | {"at": None} == {
        "event": "run.dead", "run_id": 42, "task_id": 7, "type": "http", "attempt": 3,
        "scheduled_time": when.isoformat(), "error": "unexpected HTTP status 500", "at": None,
    }  # fmt: skip
    assert len(refusing.posts) == 1  # a 400 is the receiver's answer to this body: not tried again


async def test_a_processor_posts_once_for_a_run_that_spent_its_retries(
    stack: Stack, db: asyncpg.Connection, target: Target
) -> None:
    target.status = 500
    async with hook(503) as receiver:
        await stack.start(distributor=1, processor=1, api=True, TASKMILL_ALERT_WEBHOOK_URL=receiver.url,
                          TASKMILL_HTTP_ALLOW_HOSTS="127.0.0.1/32")  # fmt: skip
        async with stack.api() as api:
            body = {"name": "doomed", "type": "http", "payload": {"url": target.url("/fail")}, "max_retries": 1,
                    "retry_delay_seconds": 0}  # fmt: skip
            made = await api.post("/tasks", json=body)
            assert made.status_code == 201, made.text

        async def alerted() -> bool:
            return any(post["event"] == "run.dead" for _, post in receiver.posts[1:])

        await wait_until(alerted, timeout=30, what="the dead run's alert, after one failed post")
        await asyncio.sleep(1.5)  # nothing more comes
        run = await db.fetchrow("SELECT id, status::text, attempt FROM task_schedule WHERE task_id = $1",
                                made.json()["id"])  # fmt: skip
    assert run is not None and run["status"] == "dead" and run["attempt"] == 2
    assert [post["run_id"] for _, post in receiver.posts] == [run["id"], run["id"]]
    assert receiver.posts[-1][1]["error"] == "unexpected HTTP status 500"


async def test_a_run_the_rescuer_makes_dead_is_counted_and_alerted_once_by_the_distributor(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """TASKMILL_LOST_LIMIT=0: the run dies with its first processor. Counted where it was recorded dead, the rescuer,
    as a processor counts the dead runs it records: TaskmillDeadRuns sees both."""
    async with hook() as receiver:
        port = free_port()
        await stack.add("distributor", "--metrics-port", str(port), TASKMILL_LOST_LIMIT="0",
                        TASKMILL_ALERT_WEBHOOK_URL=receiver.url)  # fmt: skip
        processor = await stack.add("processor")
        task = await new_task(db, "long", "sleep", {"ms": 20_000}, timeout_seconds=2)
        assert await stack.running_on(task.id) is processor
        await processor.kill()

        async def counted() -> bool:
            try:
                samples = await scrape(port)
            except httpx.HTTPError:
                return False
            return value(samples, "taskmill_runs_finished_total", type="sleep", outcome="dead") == 1

        await wait_until(counted, timeout=20, what="the distributor to count the dead run")
        await wait_until(lambda: _posted(receiver), timeout=10, what="the dead run's alert")
        run = await db.fetchrow("SELECT id, status::text, error FROM task_schedule WHERE task_id = $1", task.id)
        await asyncio.sleep(1.5)  # the rescuer passes again: nothing more is counted or sent
        assert value(await scrape(port), "taskmill_runs_finished_total", type="sleep", outcome="dead") == 1
    assert run is not None and run["status"] == "dead", run
    assert [post["run_id"] for _, post in receiver.posts] == [run["id"]]
    assert receiver.posts[0][1]["type"] == "sleep"


async def _posted(receiver: Hook) -> bool:
    return bool(receiver.posts)
