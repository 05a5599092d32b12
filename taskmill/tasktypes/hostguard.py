"""Which hosts http tasks may call: optional allow and deny lists of names, `*.domain` wildcards and CIDR blocks.

The check happens where the connection is made (a network backend under httpx: taskmill/tasktypes/http_client.py),
not on the URL alone: a name is
resolved once, every address it resolves to is checked, and the connection goes to a checked address. So a name
that resolves to a denied address is refused, and DNS cannot answer differently between the check and the connect.

- deny wins: a host is refused when its name matches a deny entry or any of its addresses is in a denied block;
- link-local and cloud metadata addresses (PROTECTED: 169.254.0.0/16, fe80::/10, fd00:ec2::254, 100.100.100.200)
  are refused unless the allow list names them explicitly: by the host's name, or by a block inside the protected
  one (`169.254.169.254/32`; `0.0.0.0/0` does not count). Whoever may create an http task could otherwise read the
  machine's cloud credentials;
- with an allow list, a host must match it: by name, or with every address in an allowed block;
- no lists (the default): every other host is allowed (calling internal services is the point of http tasks).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Link-local (where clouds serve instance metadata and credentials: 169.254.169.254 on AWS, GCP and Azure), and the
# metadata addresses outside it (AWS's IPv6 one, Alibaba's).
PROTECTED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(block) for block in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")
)


def _plain(address: Address) -> Address:
    """An IPv4-mapped IPv6 address as the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class HostRefused(Exception):
    """The host guard refused a connection; the message says which host, which address and which rule."""


@dataclass(frozen=True, slots=True)
class HostRules:
    """One list (allow or deny): exact names, `*.domain` suffixes (subdomains only) and address blocks."""

    setting: str
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def name_match(self, host: str) -> str | None:
        """The entry `host` matches by name, or None."""
        if host in self.names:
            return host
        for suffix in self.suffixes:
            if host.endswith(suffix):
                return "*" + suffix
        return None

    def address_match(self, address: Address) -> Network | None:
        """The block `address` falls in, or None (an IPv4-mapped IPv6 address is checked as its IPv4 address)."""
        address = _plain(address)
        for network in self.networks:
            if address.version == network.version and address in network:
                return network
        return None


def _inside(inner: Network, outer: Network) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def normalize(host: str) -> str:
    return host.strip().rstrip(".").lower()


def parse_rules(setting: str, text: str) -> HostRules:
    """Parses a comma-separated list; ValueError naming the entry that is neither a name, a wildcard nor a block."""
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[Network] = []
    for raw in text.split(","):
        entry = normalize(raw)
        if not entry:
            continue
        if entry.startswith("*."):
            if not _is_hostname(entry[2:]):
                raise ValueError(f"{raw.strip()!r} is not a valid wildcard (use *.example.com)")
            suffixes.append(entry[1:])
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        if "/" in entry or not _is_hostname(entry):
            raise ValueError(f"{raw.strip()!r} is neither a host name, a *.domain wildcard nor an address block")
        names.add(entry)
    return HostRules(setting, frozenset(names), tuple(suffixes), tuple(networks))


def _is_hostname(name: str) -> bool:
    labels = name.split(".")
    return len(name) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() and label.isascii()
        for label in labels
    )


def _check_list(value: str) -> str:
    parse_rules("", value)
    return value


# A settings field holding such a list: a bad entry stops the process with one line naming it.
HostList = Annotated[str, AfterValidator(_check_list)]


@dataclass(frozen=True, slots=True)
class HostGuard:
    allow: HostRules
    deny: HostRules
    protected: tuple[Network, ...] = PROTECTED

    @classmethod
    def from_lists(cls, allow: str, deny: str) -> HostGuard:
        return cls(parse_rules("TASKMILL_HTTP_ALLOW_HOSTS", allow), parse_rules("TASKMILL_HTTP_DENY_HOSTS", deny))

    def _explicitly_allowed(self, host: str, address: Address, block: Network) -> bool:
        """Whether the allow list names this protected address itself: the host by name, or a block inside the
        protected one (a wider allowed block, `0.0.0.0/0`, does not count)."""
        if self.allow.name_match(host):
            return True
        allowed = self.allow.address_match(address)
        return allowed is not None and _inside(allowed, block)

    def _protected_block(self, host: str, address: Address) -> Network | None:
        """The protected block `address` is in, unless the allow list names it explicitly."""
        for block in self.protected:
            if address.version == block.version and address in block:
                return None if self._explicitly_allowed(host, address, block) else block
        return None

    def check_name(self, host: str) -> None:
        """Refuses a host denied by name; the addresses are checked once known (`check_addresses`)."""
        if entry := self.deny.name_match(host):
            raise HostRefused(f"host {host} is refused by {self.deny.setting} ({entry})")

    def check_addresses(self, host: str, addresses: Sequence[Address]) -> None:
        """Refuses when any address is denied, or (with an allow list) when the host is not allowed."""
        for address in addresses:
            shown = "" if str(address) == host else f" resolves to {address}, which"
            if block := self.deny.address_match(address):
                raise HostRefused(f"host {host}{shown} is refused by {self.deny.setting} ({block})")
            plain = _plain(address)
            if block := self._protected_block(host, plain):
                raise HostRefused(
                    f"host {host}{shown} is a link-local or cloud metadata address ({block}): refused unless "
                    f"{self.allow.setting} names it (e.g. {plain}/{plain.max_prefixlen})"
                )
        if not self.allow or self.allow.name_match(host):
            return
        outside = [a for a in addresses if self.allow.address_match(a) is None]
        if outside:
            shown = "" if str(outside[0]) == host else f" (address {outside[0]})"
            raise HostRefused(f"host {host}{shown} is not in {self.allow.setting}")


def literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[Address]:
    """The addresses of `host`, in the resolver's order (getaddrinfo runs in a thread: the loop never blocks)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[Address, None] = {}
    for *_, sockaddr in infos:
        seen[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    return list(seen)
