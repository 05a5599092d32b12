"""Asking for processors: within the minimum and maximum, down only after the cool-down, through a real command or
a real webhook, and from the capacity role itself."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from ruamel.yaml import YAML

from capacity.provision import CommandHook, HookFailed, Scaler, UrlHook, hook_from
from capacity.service import DESIRED, REQUIRED
from capacity.service import run as capacity_run
from taskmill.settings import ConfigError, Settings
from tests.helpers import new_task


def test_the_count_stays_within_the_minimum_and_the_maximum() -> None:
    scaler = Scaler(minimum=2, maximum=5, cooldown_s=0)
    assert scaler.decide(0, now=0) == 2
    scaler.applied(2, 0)
    assert scaler.decide(1, now=1) is None  # already at the minimum
    assert scaler.decide(50, now=2) == 5
    scaler.applied(5, 2)
    assert scaler.decide(6, now=3) is None  # already at the maximum


def test_scaling_up_is_immediate_and_scaling_down_waits_for_the_cool_down() -> None:
    scaler = Scaler(minimum=1, maximum=100, cooldown_s=300)
    assert scaler.decide(4, now=1000) == 4
    scaler.applied(4, 1000)
    assert scaler.decide(10, now=1010) == 10  # load is coming: at once, cool-down or not
    scaler.applied(10, 1010)
    assert scaler.decide(3, now=1100) is None  # a dip 90 s after a change: hold
    assert scaler.decide(3, now=1309) is None
    assert scaler.decide(3, now=1310) == 3  # 300 s after the last change
    scaler.applied(3, 1310)
    assert scaler.decide(3, now=1311) is None  # nothing to change


def test_a_failed_call_is_asked_again_at_the_next_forecast() -> None:
    scaler = Scaler(minimum=1, maximum=10, cooldown_s=300)
    assert scaler.decide(5, now=0) == 5  # the hook fails: applied() is not called
    assert scaler.decide(5, now=60) == 5


def test_a_minimum_above_the_maximum_is_refused_naming_both_settings() -> None:
    with pytest.raises(ConfigError, match=r"MIN_INSTANCES \(5\).*MAX_INSTANCES \(3\)"):
        Scaler(minimum=5, maximum=3, cooldown_s=0)


def test_hook_settings_are_checked_at_start() -> None:
    with pytest.raises(ConfigError, match="not both"):
        hook_from(Settings(capacity_hook_command="true", capacity_hook_url="http://127.0.0.1:1/"))
    with pytest.raises(ConfigError, match="cannot be split"):
        hook_from(Settings(capacity_hook_command="scale 'unbalanced"))
    assert hook_from(Settings()) is None


async def test_the_command_hook_runs_without_a_shell_with_the_count_in_place(tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen = "' '.join(sys.argv[1:]) + '|' + os.environ['TASKMILL_INSTANCES']"
    script = f"import sys, os; open({str(out)!r}, 'w').write({seen})"
    hook = CommandHook.parse(f"{sys.executable} -c {json.dumps(script)} --replicas={{instances}} '$(reboot)'", 10)
    await hook(7, {})
    assert out.read_text() == "--replicas=7 $(reboot)|7"  # substituted, and nothing interpreted


async def test_a_failing_or_hanging_command_hook_raises_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(HookFailed, match="exited with 3: no cluster"):
        await CommandHook.parse(f"{sys.executable} -c \"print('no cluster'); raise SystemExit(3)\"", 10)(1, {})
    with pytest.raises(HookFailed, match="cannot start 'no-such-scaler'"):
        await CommandHook.parse("no-such-scaler {instances}", 10)(1, {})
    with pytest.raises(HookFailed, match=r"did not finish within 0\.3 s"):
        await CommandHook.parse("sleep 30", 0.3)(1, {})


class Webhook:
    """A local HTTP endpoint that records the JSON bodies POSTed to it and answers `status`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        self.bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".encode())
        await writer.drain()
        writer.close()


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    server = await asyncio.start_server(hook.handle, "127.0.0.1", 0)
    hook.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/scale"
    async with server:
        yield hook


async def test_the_url_hook_posts_the_count_as_json_and_a_non_2xx_fails(webhook: Webhook) -> None:
    hook = UrlHook(webhook.url, 5)
    await hook(4, {"peak": 6})
    assert webhook.bodies == [{"instances": 4, "peak": 6}]
    webhook.status = 503
    with pytest.raises(HookFailed, match="answered 503"):
        await hook(5, {})


async def test_the_capacity_role_asks_the_hook_for_the_forecast_peak(
    settings: Settings, db: asyncpg.Connection, webhook: Webhook
) -> None:
    task = (await new_task(db, "s", "sleep", {"ms": 1}, estimated_ms=9_000, active=False)).id
    # 5 runs of 9,000 ms in one minute ten minutes from now: 5 instances, within the 15 minutes looked ahead.
    await db.execute(
        "INSERT INTO task_schedule (task_id, scheduled_time) "
        "SELECT $1, date_trunc('minute', now()) + interval '10 minutes' + make_interval(secs => i) "
        "FROM generate_series(1, 5) i",
        task,
    )
    role = settings.model_copy(update={"capacity_hook_url": webhook.url, "capacity_min_instances": 2})
    await capacity_run(role, until_idle=True)
    assert len(webhook.bodies) == 1
    body = webhook.bodies[0]
    assert (body["instances"], body["peak"], body["wanted"], body["now"]) == (5, 5, 5, 0)


def test_the_keda_example_scales_on_a_gauge_the_capacity_role_exports() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "keda-scaledobject.yaml"
    document = YAML(typ="safe", pure=True).load(example)
    assert document["kind"] == "ScaledObject"
    [trigger] = document["spec"]["triggers"]
    exported = {metric.name for gauge in (DESIRED, REQUIRED) for metric in gauge.describe()}
    assert trigger["type"] == "prometheus"
    assert any(name in trigger["metadata"]["query"] for name in exported), trigger["metadata"]["query"]
