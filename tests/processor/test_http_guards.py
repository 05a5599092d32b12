"""Http task guards: the allow and deny lists of hosts, checked where the connection is made, and the cap on how
much of a response is read."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import asyncpg
import httpcore
import httpx
import pytest
from pydantic import ValidationError

from taskmill.settings import Settings, format_settings_error
from taskmill.tasktypes import hostguard
from taskmill.tasktypes.base import RunContext
from taskmill.tasktypes.hostguard import HostGuard, HostRefused
from taskmill.tasktypes.http import HTTP
from taskmill.tasktypes.http_client import GuardedBackend, http_client
from tests.helpers import new_task
from tests.processor.http_targets import Target
from tests.processor.test_tasktypes import only_result, run_pipeline


def ip(text: str) -> hostguard.Address:
    return ipaddress.ip_address(text)


def test_deny_wins_and_entries_match_by_name_wildcard_or_block() -> None:
    guard = HostGuard.from_lists("*.example.com, 10.0.0.0/8, 2001:db8::/32", "secret.example.com, 10.9.0.0/16")
    guard.check_name("api.example.com")
    guard.check_addresses("api.example.com", [ip("203.0.113.7")])  # allowed by name, wherever it points
    guard.check_addresses("10.1.2.3", [ip("10.1.2.3")])
    guard.check_addresses("files.internal", [ip("10.1.2.3"), ip("2001:db8::1")])  # every address allowed
    refusals: dict[str, Callable[[], None]] = {
        "secret.example.com": lambda: guard.check_name("secret.example.com"),
        "10.9.1.1": lambda: guard.check_addresses("10.9.1.1", [ip("10.9.1.1")]),
        "api.example.com -> 10.9.0.5": lambda: guard.check_addresses("api.example.com", [ip("10.9.0.5")]),
        "v4-mapped": lambda: guard.check_addresses("mapped.test", [ip("::ffff:10.9.0.1")]),
        "half outside": lambda: guard.check_addresses("mixed.test", [ip("10.1.1.1"), ip("198.51.100.1")]),
        "apex": lambda: guard.check_addresses("example.com", [ip("203.0.113.7")]),
    }
    let_through = []
    for case, check in refusals.items():
        try:
            check()
        except HostRefused:
            continue
        let_through.append(case)
    assert let_through == []
    with pytest.raises(HostRefused, match=r"^host api.example.com resolves to 10.9.0.5, which is refused by "):
        guard.check_addresses("api.example.com", [ip("10.9.0.5")])


def test_no_lists_allow_every_host_but_link_local_and_metadata_addresses() -> None:
    guard = HostGuard.from_lists("", " , ")
    guard.check_name("anything.example")
    guard.check_addresses("anything.example", [ip("127.0.0.1"), ip("10.1.2.3"), ip("203.0.113.7")])


PROTECTED = ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254"]


@pytest.mark.parametrize("address", PROTECTED)
def test_link_local_and_cloud_metadata_addresses_are_refused_by_default(address: str) -> None:
    guard = HostGuard.from_lists("", "")
    with pytest.raises(HostRefused, match=r"is a link-local or cloud metadata address \("):
        guard.check_addresses(address, [ip(address)])
    # Also behind a name that resolves there, and beside an address that is fine.
    with pytest.raises(
        HostRefused, match=rf"^host metadata.test resolves to {re.escape(str(ip(address)))}, which is a link-local"
    ):
        guard.check_addresses("metadata.test", [ip("203.0.113.7"), ip(address)])


def test_a_protected_address_is_let_through_only_when_the_allow_list_names_it() -> None:
    by_block = HostGuard.from_lists("169.254.169.254/32, 0.0.0.0/0", "")
    by_block.check_addresses("169.254.169.254", [ip("169.254.169.254")])
    with pytest.raises(HostRefused, match="refused unless TASKMILL_HTTP_ALLOW_HOSTS names it"):
        by_block.check_addresses("169.254.0.9", [ip("169.254.0.9")])  # 0.0.0.0/0 is not naming it
    by_name = HostGuard.from_lists("metadata.google.internal", "")
    by_name.check_addresses("metadata.google.internal", [ip("169.254.169.254")])
    everything = HostGuard.from_lists("0.0.0.0/0, ::/0", "")
    for address in PROTECTED:
        with pytest.raises(HostRefused):
            everything.check_addresses(address, [ip(address)])
    denied = HostGuard.from_lists("169.254.169.254/32", "169.254.0.0/16")  # deny still wins
    with pytest.raises(HostRefused, match="refused by TASKMILL_HTTP_DENY_HOSTS"):
        denied.check_addresses("169.254.169.254", [ip("169.254.169.254")])


class _NoTraffic(httpcore.AsyncNetworkBackend):
    """A network backend that fails the test if anything tries to connect: no packet may leave for these hosts."""

    async def connect_tcp(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        raise AssertionError(f"a connection was attempted: {args}")


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://[fe80::1]/"]
)
async def test_the_guard_refuses_a_metadata_url_before_any_connection_is_attempted(url: str) -> None:
    backend = GuardedBackend(HostGuard.from_lists("", ""), _NoTraffic())
    host = httpx.URL(url).host
    with pytest.raises(HostRefused, match="link-local or cloud metadata"):
        await backend.connect_tcp(host, 80)


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "http://x.example", "*.", "a b", "bad_*.example.com"])
def test_a_bad_list_entry_stops_the_process_naming_the_setting(entry: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(http_deny_hosts=f"10.0.0.0/8, {entry}")
    message = format_settings_error(caught.value)
    assert message.startswith("bad setting: TASKMILL_HTTP_DENY_HOSTS: ")
    assert repr(entry.strip()) in message


async def test_a_denied_address_fails_the_run_permanently_and_the_target_is_never_called(
    settings: Settings, db: asyncpg.Connection, target: Target
) -> None:
    guarded = settings.model_copy(update={"http_deny_hosts": "192.0.2.0/24, 127.0.0.0/8"})
    # Retries are asked for, but another attempt could do no better: one attempt, then dead.
    task = await new_task(db, "internal", "http", {"url": target.url()}, max_retries=3, retry_delay_seconds=0)
    await run_pipeline(guarded, db, {"dead": 1})
    row = await only_result(db, task.id)
    assert row["error"] == row["run_error"] == "host 127.0.0.1 is refused by TASKMILL_HTTP_DENY_HOSTS (127.0.0.0/8)"
    assert (row["run_attempt"], row["attempt"]) == (1, 1)
    assert target.requests == []


async def test_a_name_that_resolves_to_a_denied_address_is_refused(
    settings: Settings, db: asyncpg.Connection, target: Target
) -> None:
    guarded = settings.model_copy(update={"http_deny_hosts": "127.0.0.0/8, ::1"})
    task = await new_task(db, "by name", "http", {"url": target.url(host="localhost")})
    await run_pipeline(guarded, db, {"failed": 1})
    error = (await only_result(db, task.id))["error"]
    assert error.startswith("host localhost resolves to "), error
    assert "which is refused by TASKMILL_HTTP_DENY_HOSTS" in error
    assert target.requests == []


async def test_with_an_allow_list_only_the_hosts_on_it_are_called(
    settings: Settings, db: asyncpg.Connection, target: Target
) -> None:
    guarded = settings.model_copy(update={"http_allow_hosts": "127.0.0.1/32, *.example.test"})
    allowed = await new_task(db, "allowed", "http", {"url": target.url()})
    other = await new_task(db, "other", "http", {"url": target.url(host="127.0.0.2")})
    await run_pipeline(guarded, db, {"succeeded": 1, "failed": 1})
    assert (await only_result(db, allowed.id))["run_status"] == "succeeded"
    assert (await only_result(db, other.id))["error"] == "host 127.0.0.2 is not in TASKMILL_HTTP_ALLOW_HOSTS"
    assert len(target.requests) == 1


async def test_the_connection_goes_to_the_address_that_was_checked(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name is resolved once, by the guard: a second lookup at connect time could answer differently (DNS
    rebinding). `.invalid` never resolves, so the request can only reach the target through the checked address."""
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[hostguard.Address]:
        lookups.append(host)
        return [ip("127.0.0.1")]

    monkeypatch.setattr(hostguard, "resolve", resolve)
    async with http_client("", "10.0.0.0/8") as client:
        ctx = RunContext(1, 1, 1, 5.0, 1024, client)
        result = await HTTP.run(HTTP.parse({"url": target.url(host="rebind.invalid")}), ctx)
    assert result["status"] == 200
    assert lookups == ["rebind.invalid"]
    assert target.requests[0]["host"] == f"rebind.invalid:{target.port}"


async def test_a_response_is_read_up_to_the_cap_and_the_result_says_when_it_was_cut(
    settings: Settings, db: asyncpg.Connection, target: Target
) -> None:
    capped = settings.model_copy(update={"http_max_response_bytes": 100_000, "output_cap_bytes": 4096})
    huge = await new_task(db, "huge", "http", {"url": target.url("/big?bytes=5000000")})
    modest = await new_task(db, "modest", "http", {"url": target.url("/big?bytes=10000")})
    await run_pipeline(capped, db, {"succeeded": 2})
    cut = (await only_result(db, huge.id))["result"]
    assert (cut["status"], cut["body"], cut["complete"], cut["truncated"]) == (200, "x" * 4096, False, True)
    assert 100_000 <= cut["body_bytes"] < 100_000 + 2 * 65536  # stopped within a read of the cap
    whole = (await only_result(db, modest.id))["result"]
    assert whole == {"status": 200, "body": "x" * 4096, "body_bytes": 10_000, "complete": True, "truncated": True}
