"""Where the tasks of a fault scenario leave their side effects, so the invariants can count them.

- `Target`: an HTTP server on 127.0.0.1 in the test's event loop. It records every call (path and
  `Idempotency-Key`, which http tasks set to their run id) and what it answered. Query parameters set its
  behaviour per task: `hang=1` holds the call until `release()`, `delay_ms=N` answers late, `fail_first=N`
  answers 500 to the first N calls of each key, `status=N` always answers N.
- `CommandLog`: a file command tasks append `<run id> <pid>` to (the run id from `TASKMILL_RUN_ID`).

Both mark what they start with `MARK=<scenario mark>` in the task's environment, so the orphan check can find
a scenario's command processes and no other test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

# The environment variable that marks a scenario's command processes.
MARK = "TASKMILL_FAULT_MARK"


@dataclass(slots=True)
class Call:
    path: str
    key: str | None  # the Idempotency-Key header
    status: int | None = None  # what the target answered; None while held, or when the caller left first

    @property
    def effective(self) -> bool:
        """The call did what it asks for and the caller was there to hear it: a completed side effect."""
        return self.status is not None and 200 <= self.status < 300


class Target:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def url(self, name: str, **modes: int) -> str:
        query = f"?{urlencode(modes)}" if modes else ""
        return f"http://127.0.0.1:{self._port}/{name}{query}"

    def payload(self, name: str, **modes: int) -> dict[str, Any]:
        """An http task's payload that calls this target (see the module docstring for the modes)."""
        return {"method": "POST", "url": self.url(name, **modes), "json": {"task": name}}

    def release(self) -> None:
        """Answers every held call, and from now on answers `hang` calls at once."""
        self._released.set()

    def calls_to(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.path == name]

    def effects(self) -> Counter[str]:
        """Completed side effects by idempotency key."""
        return Counter(c.key for c in self.calls if c.effective and c.key is not None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            call, modes = await self._read(reader)
            self.calls.append(call)
            status = self._status(call, modes)
            if "hang" in modes:
                await self._released.wait()
            if "delay_ms" in modes:
                await asyncio.sleep(int(modes["delay_ms"]) / 1000)
            if reader.at_eof():
                return  # the caller hung up (or died) while we held the call: nobody hears the answer
            body = json.dumps({"ok": status < 300}).encode()
            head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            await writer.drain()
            call.status = status
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[Call, dict[str, str]]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        _, target, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        if length := int(headers.get("content-length", "0")):
            await reader.readexactly(length)
        url = urlsplit(target)
        return Call(url.path.lstrip("/"), headers.get("idempotency-key")), dict(parse_qsl(url.query))

    def _status(self, call: Call, modes: dict[str, str]) -> int:
        if "status" in modes:
            return int(modes["status"])
        earlier = sum(1 for c in self.calls if c.key == call.key) - 1
        return 500 if earlier < int(modes.get("fail_first", "0")) else 200


class CommandLog:
    """A file each command task of the scenario appends `<run id> <pid>` to when it starts."""

    def __init__(self, path: Path, mark: str) -> None:
        self.path = path
        self.mark = mark

    def payload(self, *, sleep_s: float = 0) -> dict[str, Any]:
        """A command task's payload. `sleep_s` holds only a run's first attempt (one line in the log so far), so
        a retry after a crash is quick."""
        script = 'echo "$TASKMILL_RUN_ID $$" >> "$TASKMILL_FAULT_LOG"'
        if sleep_s:
            script += f'; [ "$(grep -c "^$TASKMILL_RUN_ID " "$TASKMILL_FAULT_LOG")" -gt 1 ] || sleep {sleep_s:g}'
        return {"argv": ["sh", "-c", script], "env": {"TASKMILL_FAULT_LOG": str(self.path), MARK: self.mark}}

    def entries(self) -> list[tuple[int, int]]:
        """(run id, pid) for every start, in order."""
        if not self.path.exists():
            return []
        pairs = (line.split() for line in self.path.read_text().splitlines() if line.strip())
        return [(int(run), int(pid)) for run, pid in pairs]

    def starts(self) -> Counter[int]:
        """How many times each run's command started."""
        return Counter(run for run, _ in self.entries())
