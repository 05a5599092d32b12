"""A TCP proxy on 127.0.0.1, in the test's event loop, between a role and a server (the broker or the database),
to break the network between them in the ways networks break:

- `passing` (the start): bytes flow both ways.
- `blackhole()`: every connection stays open and nothing gets through, either way (what is sent is read and
  dropped, as by a firewall that drops packets or a peer whose host died); new connections are accepted and held
  the same way. Only heartbeats or timeouts can tell.
- `restore()`: new connections pass again; the blackholed ones are closed (their streams lost bytes: no protocol
  could go on over them), so their clients see them end and connect anew.
- `cut()`: closes every connection now, both sides (a reset), and goes on passing new ones.

    proxy = await Proxy.start("127.0.0.1", 5672)
    await stack.add("processor", AMQP_URL=proxy.url(stack.settings.amqp_url))
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 64 * 1024


@dataclass(eq=False)
class _Link:
    """One client connection and, unless it arrived during a blackhole, its connection upstream."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    dead: bool = False  # blackholed: forwards nothing, ever again
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.close()
        for pump in self.pumps:
            pump.cancel()


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self.blackholed = False
        self.accepted = 0  # connections accepted so far

    @classmethod
    async def start(cls, host: str, port: int) -> Proxy:
        proxy = cls(host, port)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        return proxy

    @classmethod
    async def to(cls, url: str) -> Proxy:
        """A proxy in front of the server of `url` (postgresql:// or amqp://)."""
        parts = urlsplit(url)
        assert parts.hostname and parts.port, url
        return await cls.start(parts.hostname, parts.port)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{self.port}"))

    def blackhole(self) -> None:
        self.blackholed = True
        for link in self._links:
            link.dead = True

    def restore(self) -> None:
        self.blackholed = False
        for link in [link for link in self._links if link.dead]:
            link.close()

    def cut(self) -> None:
        for link in list(self._links):
            link.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer, dead=self.blackholed)
        self._links.add(link)
        try:
            if link.dead:
                await self._pump(reader, None, link)  # held: read and dropped until closed
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(self._host, self._port)
            except OSError:
                return  # the server is down: the client sees its connection end, as without a proxy
            link.pumps = [
                asyncio.create_task(self._pump(reader, link.upstream, link)),
                asyncio.create_task(self._pump(up_reader, writer, link)),
            ]
            await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
            if link.dead:
                # A blackhole tells neither side that the other hung up: the client's end stays open until the
                # client gives up on it, or the link is restored or cut.
                await asyncio.wait(link.pumps)
        finally:
            link.close()
            self._links.discard(link)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter | None, link: _Link) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await source.read(_CHUNK):
                if link.dead or sink is None:
                    continue  # dropped on the floor
                sink.write(data)
                await sink.drain()
