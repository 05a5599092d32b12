"""A canary secret through the real roles: a command task gets it as an environment variable, an http task sends it
in a header to a local target, and a third task fails, waits in a delay queue for its retry, and is dead-lettered.
Both receivers must get the canary, and it must appear nowhere else: in no text or JSON column of any table, no
message on the broker (a spy queue on the runs and dead-letter exchanges, the delay and dead-letter queues
themselves), no API response, no log record at DEBUG, and no process command line."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from cryptography.fernet import Fernet

import distributor.service
import processor.service
from taskmill import topology
from taskmill.settings import Settings
from taskmill.topology import Names
from tests.api.conftest import SECRET, app_client, bearer
from tests.helpers import running, wait_until
from tests.processor.http_targets import Target

CANARY = f"canary-{uuid.uuid4().hex}-do-not-leak"
ADMIN = bearer("admin")  # signed with SECRET
RETRY_DELAY_S = 1.0  # long enough to find the retry in its delay queue


@dataclass
class Spy:
    """Copies of every message routed to the runs exchange (for our task types) and the dead-letter exchange."""

    messages: list[AbstractIncomingMessage] = field(default_factory=list)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)
        await message.ack()


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[tuple[AbstractRobustConnection, Spy]]:
    connection = await aio_pika.connect_robust(settings.amqp_url)
    channel = await connection.channel()
    topo = await topology.declare(channel, settings)  # the roles declare the same; the spy must be bound first
    spy = Spy()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for task_type in ("command", "http"):
        await queue.bind(topo.runs, routing_key=task_type)
    await queue.bind(topo.dead)
    await queue.consume(spy.on_message)
    try:
        yield connection, spy
    finally:
        await connection.close()


async def columns_holding(db: asyncpg.Connection, needle: str) -> list[str]:
    """Every text, varchar, char, json and jsonb column (and arrays of them) of every table holding `needle`, and
    every bytea column holding it in the clear."""
    columns = await db.fetch(
        """SELECT c.table_schema, c.table_name, c.column_name, c.data_type, c.udt_name
           FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
             AND (c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea')
                  OR c.udt_name IN ('_text', '_varchar', '_bpchar', '_json', '_jsonb'))"""
    )
    found = []
    for c in columns:
        column = f'"{c["table_schema"]}"."{c["table_name"]}"."{c["column_name"]}"'
        if c["data_type"] == "bytea":
            condition = f"position(convert_to($1, 'UTF8') in \"{c['column_name']}\") > 0"
        else:
            condition = f'strpos("{c["column_name"]}"::text, $1) > 0'
        sql = f'SELECT count(*) FROM "{c["table_schema"]}"."{c["table_name"]}" WHERE {condition}'
        if await db.fetchval(sql, needle):
            found.append(column)
    return found


def command_lines() -> dict[int, str]:
    lines = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass  # gone meanwhile
    return lines


@pytest.mark.slow
async def test_a_canary_secret_reaches_the_command_and_the_http_target_and_nowhere_else(
    settings: Settings,
    db: asyncpg.Connection,
    target: Target,
    broker: tuple[AbstractRobustConnection, Spy],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in (None, "aiormq", "aio_pika", "asyncpg", "httpx", "httpcore", "api", "distributor", "processor"):
        caplog.set_level(logging.DEBUG, logger=name)
    keyed = settings.model_copy(
        update={"secret_key": Fernet.generate_key().decode(), "jwt_secret": SECRET, "concurrency": 4}
    )
    connection, spy = broker
    names = Names(keyed.broker_prefix)
    got, go = tmp_path / "got", tmp_path / "go"
    # The command writes what it received to a file (not to its output, which is stored), then waits to be let go,
    # so the test can read every process's command line while it runs.
    script = 'printf %s "$API_KEY" > "$1"; while [ ! -e "$2" ]; do sleep 0.02; done'
    bodies: list[dict[str, Any]] = [
        {
            "name": "canary-command",
            "type": "command",
            "payload": {"argv": ["sh", "-c", script, "probe", str(got), str(go)]},
        },
        {
            "name": "canary-http",
            "type": "http",
            "payload": {
                "method": "POST",
                "url": target.url("/ok"),
                "headers": {"X-Api-Key": "{{secrets.API_KEY}}"},
                "json": {"marker": "canary-scan-sees-this"},
            },
        },
        {
            "name": "canary-dead",
            "type": "command",
            "payload": {"argv": ["sh", "-c", 'test -n "$API_KEY" && exit 3']},
            "max_retries": 1,
            "retry_delay_seconds": RETRY_DELAY_S,
        },
    ]
    responses: list[str] = []
    async with app_client(keyed) as api:
        task_ids = []
        for body in bodies:
            created = await api.post("/tasks", json={**body, "secrets": {"API_KEY": CANARY}}, headers=ADMIN)
            assert created.status_code == 201, created.text
            assert created.json()["secrets"] == ["API_KEY"]
            responses.append(created.text)
            task_ids.append(created.json()["id"])

        async with running(distributor.service.run, keyed), running(processor.service.run, keyed):

            async def command_started() -> bool:
                return got.exists()

            await wait_until(command_started, 20, what="the command to start")
            lines = command_lines()
            assert any(str(go) in line for line in lines.values()), "the command is not among the processes"
            leaking = {pid: line for pid, line in lines.items() if CANARY in line}
            go.touch()

            # While the failing task's second attempt waits in its delay queue, look at the message there.
            delay_queue = names.delay_queue(round(RETRY_DELAY_S * 1000), "command")
            waiting: list[bytes] = []

            async def delayed() -> bool:
                # A channel per look: a passive declare of a queue not there yet closes its channel.
                async with connection.channel() as channel:
                    try:
                        queue = await channel.declare_queue(delay_queue, passive=True)
                    except aio_pika.exceptions.ChannelClosed:
                        return False
                    message = await queue.get(no_ack=False, fail=False)
                    if message is not None:
                        waiting.append(message.body)
                        await message.nack(requeue=True)
                return bool(waiting)

            await wait_until(delayed, 20, interval=0.02, what="the retry in its delay queue")

            async def finished() -> bool:
                rows = await db.fetch("SELECT status::text FROM task_schedule ORDER BY task_id")
                return [r[0] for r in rows] == ["succeeded", "succeeded", "dead"]

            await wait_until(finished, 30, what="the three runs to finish")

        for task_id in task_ids:
            responses.append((await api.get(f"/tasks/{task_id}", headers=ADMIN)).text)
            runs = await api.get(f"/tasks/{task_id}/runs", headers=ADMIN)
            responses.append(runs.text)
            for run in runs.json():
                responses.append((await api.get(f"/runs/{run['id']}", headers=ADMIN)).text)
        responses.append((await api.get("/tasks", headers=ADMIN)).text)

    dead_letters = []
    async with connection.channel() as channel:
        dead_queue = await channel.declare_queue(names.dead_queue, passive=True)
        while (message := await dead_queue.get(no_ack=True, fail=False)) is not None:
            dead_letters.append(message)

    # The secret worked: both receivers got the canary.
    assert got.read_text() == CANARY
    assert [r["x-api-key"] for r in target.requests] == [CANARY]

    # And it leaked nowhere: the database (the scan does find a payload value, so it looks where it should) ...
    assert await columns_holding(db, "canary-scan-sees-this") == ['"public"."tasks"."payload"']
    assert await columns_holding(db, CANARY) == []
    # ... the broker (each message carried the secrets, encrypted) ...
    on_broker = [*spy.messages, *dead_letters]
    assert len(spy.messages) >= 3 + 1 + 1  # three runs, one retry, one dead letter
    assert dead_letters and waiting
    for message in on_broker:
        assert CANARY.encode() not in message.body
        assert CANARY not in str(message.headers)
        assert b'"secrets":"gAAAAA' in message.body.replace(b" ", b"")  # Fernet ciphertext
    assert all(CANARY.encode() not in body and b'"secrets":"gAAAAA' in body for body in waiting)
    # ... the API's responses, the logs, and the command lines of every process while the command ran.
    assert len(responses) == 3 + 3 + 3 + 3 + 1
    assert all(CANARY not in response for response in responses)
    assert caplog.records
    assert CANARY not in caplog.text
    assert all(CANARY not in str(record.__dict__) for record in caplog.records)
    assert leaking == {}
    assert os.environ.get("API_KEY") is None  # the processor's own environment did not take it either
