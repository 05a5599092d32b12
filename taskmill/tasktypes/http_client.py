"""The processor's HTTP client for http tasks: httpx over a connection pool whose every connection goes through the
host guard (taskmill/tasktypes/hostguard.py). Only the processor imports this (and so httpx's and httpcore's 50 ms of
import, 150 ms where httpx finds its command line's rich installed): the other roles read the guard's lists in their
settings without it."""

from __future__ import annotations

from collections.abc import Iterable

import httpcore
import httpx

from taskmill.tasktypes import hostguard
from taskmill.tasktypes.hostguard import HostGuard, HostRefused, literal_address, normalize


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the guard in front: resolve, check, then connect to a checked address.

    TLS still verifies and sends the URL's host name (httpcore passes it to `start_tls`, not the address).
    """

    def __init__(self, guard: HostGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        name = normalize(host)
        self._guard.check_name(name)
        literal = literal_address(name)
        try:
            addresses = [literal] if literal is not None else await hostguard.resolve(name, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        self._guard.check_addresses(name, addresses)
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:  # the first that answers, like a connect by name would
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise HostRefused(f"unix socket {path} is refused: the host guard is on")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport over a connection pool whose every connection goes through the host guard.

    httpx has no public way to hand its pool a network backend, so the pool is replaced after construction.
    """

    def __init__(self, guard: HostGuard) -> None:
        super().__init__(trust_env=False)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's defaults
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(guard),
        )


def http_client(allow_hosts: str = "", deny_hosts: str = "") -> httpx.AsyncClient:
    """The processor's client for http tasks, every connection through the host guard (TASKMILL_HTTP_*_HOSTS, and
    the link-local and metadata addresses refused by default).

    It ignores proxy variables from the environment: through a proxy the guard would check the proxy, not the
    target.
    """
    guard = HostGuard.from_lists(allow_hosts, deny_hosts)
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, transport=_GuardedTransport(guard))
