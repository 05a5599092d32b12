from __future__ import annotations

import hashlib
import logging

import aio_pika
import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet

import distributor.service
import processor.service
from api.app import create_app
from taskmill.settings import Settings
from taskmill.topology import Names
from tests.api.conftest import bearer

CANARY = "canary-7f3e9a1c-do-not-leak"
DIGEST = hashlib.sha256(CANARY.encode()).hexdigest()
WRITE = bearer("tasks:read tasks:write tasks:command")


@pytest.fixture
def keyed(api_settings: Settings) -> Settings:
    return api_settings.model_copy(update={"secret_key": Fernet.generate_key().decode()})


async def test_secrets_are_write_only_encrypted_and_reach_the_command_at_run_time(
    keyed: Settings, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_app(keyed)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        body = {
            "name": "uses-key",
            "type": "command",
            "secrets": {"API_KEY": CANARY},
            # The command checks the secret by its hash, so the payload does not hold the canary itself.
            "payload": {"argv": ["sh", "-c", f'test "$(printf %s "$API_KEY" | sha256sum | cut -c1-64)" = {DIGEST}']},
        }
        created = await client.post("/tasks", json=body, headers=WRITE)
        assert created.status_code == 201, created.text
        assert created.json()["secrets"] == ["API_KEY"]
        responses = [
            created.text,
            (await client.get(f"/tasks/{created.json()['id']}", headers=WRITE)).text,
            (await client.get("/tasks", headers=WRITE)).text,
        ]

        # Capture the message on its way through the broker.
        conn = await aio_pika.connect(keyed.amqp_url)
        channel = await conn.channel()
        await distributor.service.run(keyed, until_idle=True)
        queue = await channel.declare_queue(Names(keyed.broker_prefix).work_queue, passive=True)
        message = await queue.get(timeout=5)
        assert message is not None
        body_on_broker = message.body.decode()
        await message.nack(requeue=True)
        await conn.close()

        await processor.service.run(keyed, until_idle=True)
        assert await db.fetchval("SELECT status::text FROM task_schedule") == "succeeded"
        responses.append((await client.get(f"/tasks/{created.json()['id']}/runs", headers=WRITE)).text)

    stored = await db.fetchval("SELECT secrets FROM tasks")
    assert isinstance(stored, bytes) and CANARY.encode() not in stored
    texts = await db.fetchval(
        "SELECT string_agg(t::text, ' ') FROM (SELECT to_jsonb(x) - 'secrets' AS t FROM tasks x "
        "UNION ALL SELECT to_jsonb(s) FROM task_schedule s UNION ALL SELECT to_jsonb(r) FROM task_results r "
        "UNION ALL SELECT to_jsonb(a) FROM run_audit a) all_rows"
    )
    assert CANARY not in texts
    assert CANARY not in body_on_broker and '"secrets"' in body_on_broker
    assert all(CANARY not in r for r in responses)
    assert CANARY not in caplog.text


async def test_an_edit_keeps_secrets_unless_it_names_them(keyed: Settings, db: asyncpg.Connection) -> None:
    app = create_app(keyed)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        task = (
            await client.post(
                "/tasks", json={"name": "k", "type": "noop", "secrets": {"A": "1", "B": "2"}}, headers=WRITE
            )
        ).json()
        kept = await client.put(f"/tasks/{task['id']}", json={"name": "k", "type": "noop"}, headers=WRITE)
        assert kept.json()["secrets"] == ["A", "B"]
        cleared = await client.put(
            f"/tasks/{task['id']}", json={"name": "k", "type": "noop", "secrets": {}}, headers=WRITE
        )
        assert cleared.json()["secrets"] == []
    assert await db.fetchval("SELECT secrets FROM tasks") is None


async def test_secrets_without_a_server_key_are_refused(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    response = await client.post("/tasks", json={"name": "k", "type": "noop", "secrets": {"A": "x"}}, headers=WRITE)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "secrets"
    assert "TASKMILL_SECRET_KEY" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0


async def test_a_processor_with_another_key_dead_letters_the_run_with_a_clear_reason(
    keyed: Settings, db: asyncpg.Connection
) -> None:
    app = create_app(keyed)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        created = await client.post("/tasks", json={"name": "k", "type": "noop", "secrets": {"A": "x"}}, headers=WRITE)
        assert created.status_code == 201
    await distributor.service.run(keyed, until_idle=True)
    await processor.service.run(
        keyed.model_copy(update={"secret_key": Fernet.generate_key().decode()}), until_idle=True
    )
    # Retrying cannot help while the key is wrong: the run is dead-lettered at once, not failed and retried.
    row = await db.fetchrow("SELECT status::text, error FROM task_schedule")
    assert row is not None and row["status"] == "dead"
    assert "cannot be decrypted" in row["error"]
