"""An HTTP server on 127.0.0.1 for http task tests, misbehaving on request, by path:

- any other path (`/ok`): `status` with `body` (200 and a short body unless the test sets them);
- `/big?bytes=N`: 200 with N bytes (with a Content-Length);
- `/endless`: 200 with a chunked body that never ends (until the caller leaves);
- `/hang`: reads the request and never answers (until the caller leaves).

It keeps each request's line and headers, and counts the body bytes it managed to send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

_CHUNK = b"x" * 65536


@dataclass(slots=True)
class Target:
    status: int = 200
    body: bytes = b"hello from the target"
    port: int = 0
    host: str = "127.0.0.1"
    requests: list[dict[str, str]] = field(default_factory=list)
    sent: int = 0
    # Callers that left (the connection closed under a hanging or endless answer).
    hung_up: int = 0
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def url(self, path: str = "/ok", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            self.requests.append({"request": request_line, **headers})
            target = urlsplit(request_line.split(" ")[1])
            if target.path == "/hang":
                await reader.read()  # EOF: the caller gave up
                self.hung_up += 1
            elif target.path == "/endless":
                await self._endless(writer)
            else:
                size = int(parse_qs(target.query).get("bytes", ["0"])[0])
                status, body = (200, b"x" * size) if target.path == "/big" else (self.status, self.body)
                writer.write(
                    b"HTTP/1.1 %d Whatever\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (status, len(body))
                )
                writer.write(body)
                await writer.drain()
                self.sent += len(body)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up += 1
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _endless(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        frame = b"%x\r\n%s\r\n" % (len(_CHUNK), _CHUNK)
        while not writer.is_closing():
            writer.write(frame)
            await writer.drain()
            self.sent += len(_CHUNK)

    def close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Target]:
    target = Target()
    server = await asyncio.start_server(target.serve, "127.0.0.1", 0)
    target.port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield target
        finally:
            target.close_all()
