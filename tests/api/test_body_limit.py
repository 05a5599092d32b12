"""Request bodies over TASKMILL_MAX_BODY_BYTES: 413 problem+json before the body is parsed, whether its size is
declared (Content-Length: answered before a byte is read) or streamed (chunked: cut off at the limit). Checked on a
real uvicorn socket, with a raw client that controls exactly what is sent, and at the ASGI level, where the bytes
the middleware pulls can be counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from api.limits import BodyLimit
from taskmill.settings import Settings
from tests.api.conftest import bearer, served_api

LIMIT = 64 * 1024
WRITE = bearer()


@pytest.fixture
async def small_api(api_settings: Settings) -> AsyncIterator[tuple[str, int]]:
    """The API on a real socket with a 64 KiB body limit: its base URL and port."""
    async with served_api(api_settings.model_copy(update={"max_body_bytes": LIMIT})) as (base, served):
        yield base, served.api_port


def head(port: int, path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    lines += [f"Authorization: {WRITE['Authorization']}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    status_line = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, json.loads(body)


def assert_413(status: int, headers: dict[str, str], problem: Any) -> None:
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert problem["status"] == 413 and problem["title"] == "Payload too large"
    assert f"larger than {LIMIT} bytes (TASKMILL_MAX_BODY_BYTES)" in problem["detail"]


def tasks_json(n: int) -> bytes:
    return json.dumps([{"name": f"t-{i}", "type": "noop", "payload": {"pad": "x" * 100}} for i in range(n)]).encode()


async def _send_raw(port: int, head: bytes, chunks: list[bytes]) -> None:
    """Sends a request head and body chunks as given, then expects the 413 (without ever ending the body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        assert_413(*await asyncio.wait_for(read_response(reader), 10))
    finally:
        writer.close()


async def test_a_body_declared_over_the_limit_is_refused_before_a_byte_of_it_is_sent(
    small_api: tuple[str, int], db: asyncpg.Connection
) -> None:
    _, port = small_api
    # Headers only: a server that waited for the gigabyte it was promised would never answer.
    await _send_raw(port, head(port, "/tasks/bulk", Content_Length=str(10**9)), [])
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0


async def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(
    small_api: tuple[str, int], db: asyncpg.Connection
) -> None:
    _, port = small_api
    chunk = b"x" * 8192
    # Just past the limit, and never the closing zero-length chunk: the answer cannot wait for the end.
    frames = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * (LIMIT // len(chunk) + 1)
    await _send_raw(port, head(port, "/tasks/bulk", Transfer_Encoding="chunked"), frames)
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0


async def test_a_client_posting_too_much_reads_the_413_and_a_body_under_the_limit_is_served(
    small_api: tuple[str, int], db: asyncpg.Connection
) -> None:
    base, _ = small_api
    over, under = tasks_json(30_000), tasks_json(100)  # 4 MB: more than the socket buffers hold
    assert len(under) < LIMIT < len(over)

    async def streamed() -> AsyncIterator[bytes]:
        for i in range(0, len(over), 16384):
            yield over[i : i + 16384]

    headers = {**WRITE, "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        declared = await client.post("/tasks/bulk", content=over, headers=headers)
        assert_413(declared.status_code, dict(declared.headers), declared.json())
        chunked = await client.post("/tasks/bulk", content=streamed(), headers=headers)
        assert_413(chunked.status_code, dict(chunked.headers), chunked.json())
        assert await db.fetchval("SELECT count(*) FROM tasks") == 0
        served = await client.post("/tasks/bulk", content=under, headers=headers)
        assert served.status_code == 201, served.text
    assert await db.fetchval("SELECT count(*) FROM tasks") == 100


def test_the_default_limit_admits_a_bulk_create_of_ten_thousand_realistic_tasks() -> None:
    task = {
        "name": "nightly-report-00000",
        "type": "http",
        "payload": {
            "method": "POST",
            "url": "https://reports.internal.example.com/api/v1/run/00000",
            "headers": {"Authorization": "Bearer {{secrets.API_KEY}}", "Content-Type": "application/json"},
            "json": {"report": "daily", "customer": 12345, "format": "pdf"},
        },
        "schedule": {"kind": "cron", "cron": "0 2 * * *", "timezone": "Europe/Paris"},
        "max_retries": 3,
        "retry_delay_seconds": 30,
        "backoff": 2,
        "secrets": {"API_KEY": "k" * 40},
    }
    pretty = len(json.dumps([task] * 10_000, indent=2))
    assert 5_000_000 < pretty < Settings().max_body_bytes


class _Upload:
    """An endless ASGI request body in 1 KiB messages, counting what the middleware pulls."""

    def __init__(self) -> None:
        self.pulled = 0

    async def receive(self) -> Message:
        self.pulled += 1024
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}


async def _call(app: BodyLimit, headers: list[tuple[bytes, bytes]], receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    await app(scope, receive, send)
    return sent


async def _reads_everything(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"read it all"})


async def test_the_middleware_stops_pulling_a_streamed_body_at_the_limit() -> None:
    upload = _Upload()
    sent = await _call(BodyLimit(_reads_everything, max_bytes=LIMIT), [], upload.receive)
    assert sent[0]["status"] == 413
    assert LIMIT < upload.pulled <= LIMIT + 1024


async def test_the_middleware_answers_a_declared_size_without_pulling_any_of_the_body() -> None:
    upload = _Upload()
    declared = [(b"content-length", str(LIMIT + 1).encode())]
    sent = await _call(BodyLimit(_reads_everything, max_bytes=LIMIT), declared, upload.receive)
    assert sent[0]["status"] == 413
    assert upload.pulled == 0


@pytest.mark.parametrize(
    "values",
    [[b"12x"], [b"-1"], [b""], [b"10", b"20"], [b"\xd9\xa1"]],  # the last: an Arabic-Indic digit one
)
async def test_a_content_length_that_is_not_one_whole_number_is_400(values: list[bytes]) -> None:
    upload = _Upload()
    sent = await _call(
        BodyLimit(_reads_everything, max_bytes=LIMIT), [(b"content-length", v) for v in values], upload.receive
    )
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["detail"] == "the Content-Length header is not one whole number"
    assert upload.pulled == 0


async def test_a_body_at_the_limit_reaches_the_app_whole() -> None:
    parts = [b"x" * 1024] * (LIMIT // 1024)

    async def receive() -> Message:
        body = parts.pop()
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    sent = await _call(BodyLimit(_reads_everything, max_bytes=LIMIT), [], receive)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"read it all"
