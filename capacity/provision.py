"""Acting on the forecast: the processor count to ask for, and the hooks that ask (a command or a webhook).

Scaling up happens at once (the load is coming); scaling down waits until `cooldown_s` has passed since the last
change, so a dip between two peaks does not stop processors only to start them again. The count always stays
within [minimum, maximum].
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from taskmill.settings import ConfigError, Settings

log = logging.getLogger(__name__)

PLACEHOLDER = "{instances}"


class HookFailed(Exception):
    """The provisioning hook did not take the count (the message says why); it is asked again next time."""


@dataclass(slots=True)
class Scaler:
    minimum: int
    maximum: int
    cooldown_s: float
    current: int | None = None  # the count the hook last took
    changed_at: float = field(default=-math.inf)  # when (monotonic seconds)

    def __post_init__(self) -> None:
        if self.minimum > self.maximum:
            raise ConfigError(
                f"TASKMILL_CAPACITY_MIN_INSTANCES ({self.minimum}) is above "
                f"TASKMILL_CAPACITY_MAX_INSTANCES ({self.maximum})"
            )

    def clamp(self, wanted: int) -> int:
        return min(self.maximum, max(self.minimum, wanted))

    def decide(self, wanted: int, now: float) -> int | None:
        """The count to ask the hook for now, or None to leave the processors as they are."""
        target = self.clamp(wanted)
        if target == self.current:
            return None
        if self.current is None or target > self.current:
            return target
        if now - self.changed_at < self.cooldown_s:
            return None  # down only once the cool-down since the last change is over
        return target

    def applied(self, count: int, now: float) -> None:
        self.current = count
        self.changed_at = now


class Hook(Protocol):
    async def __call__(self, instances: int, details: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class CommandHook:
    """Runs `argv` with `{instances}` replaced in every argument: no shell, so nothing in it is interpreted.
    The count is also in the environment as TASKMILL_INSTANCES."""

    argv: Sequence[str]
    timeout_s: float

    @classmethod
    def parse(cls, command: str, timeout_s: float) -> CommandHook:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"TASKMILL_CAPACITY_HOOK_COMMAND cannot be split into arguments: {exc}") from None
        if not argv:
            raise ConfigError("TASKMILL_CAPACITY_HOOK_COMMAND is empty")
        return cls(argv, timeout_s)

    async def __call__(self, instances: int, details: dict[str, Any]) -> None:
        argv = [arg.replace(PLACEHOLDER, str(instances)) for arg in self.argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "TASKMILL_INSTANCES": str(instances)},
                start_new_session=True,
            )
        except OSError as exc:
            raise HookFailed(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self.timeout_s):
                output, _ = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise HookFailed(f"{argv[0]} did not finish within {self.timeout_s:g} s") from None
        if proc.returncode != 0:
            tail = output.decode(errors="replace").strip()[-500:]
            raise HookFailed(f"{argv[0]} exited with {proc.returncode}: {tail}")


@dataclass(frozen=True, slots=True)
class UrlHook:
    """POSTs `{"instances": n, ...the forecast's figures}` as JSON; any 2xx answer means it was taken."""

    url: str
    timeout_s: float

    async def __call__(self, instances: int, details: dict[str, Any]) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                response = await client.post(self.url, json={"instances": instances, **details})
        except httpx.HTTPError as exc:
            raise HookFailed(f"POST {self.url}: {type(exc).__name__}: {exc}") from None
        if not response.is_success:
            raise HookFailed(f"POST {self.url} answered {response.status_code}: {response.text[:500]}")


def hook_from(settings: Settings) -> Hook | None:
    if settings.capacity_hook_command and settings.capacity_hook_url:
        raise ConfigError("set TASKMILL_CAPACITY_HOOK_COMMAND or TASKMILL_CAPACITY_HOOK_URL, not both")
    if settings.capacity_hook_command:
        return CommandHook.parse(settings.capacity_hook_command, settings.capacity_hook_timeout_s)
    if settings.capacity_hook_url:
        return UrlHook(settings.capacity_hook_url, settings.capacity_hook_timeout_s)
    return None
