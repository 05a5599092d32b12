"""What the processor and one of its worker processes say to each other over their socket.

A frame is a 4-byte length and that many bytes. The processor sends a call: pickled, because its payload is the
handler's pydantic model, rebuilt in the worker as it was (both ends run the same code, and the bytes never leave
this host). The worker answers in JSON, never pickle (what it sends is built from what a handler returned): its log
lines as they come, then how the call ended. Every answer names the call it belongs to, counted from 1 by both ends,
so a line a handler's stray thread logs after its call ended is never taken for the next call's.

    {"ready": <pid>}  or  {"broken": "<why it cannot serve>"}          once, when the worker has imported the modules
    {"call": n, "log": <level>, "text": "..."}                          ctx.log, a line at a time
    {"call": n, "returned": "<the result as JSON>", "wait": <bool>}     the handler returned (wait: wait_for_children)
    {"call": n, "raised": "<Type: message>", "trace": "..."}            it raised (trace: the traceback, or nothing)
    {"call": n, "failed": "<reason>", "result": {...}, "permanent": <bool>}     it raised TaskFailed
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

_LENGTH = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt of a plain `def` handler, as the worker needs it."""

    handler: str
    payload: BaseModel
    run_id: int
    task_id: int
    attempt: int
    scheduled_time: datetime
    can_spawn: bool  # the run has a flow: ctx.wait_for_children() is allowed


# How a call ended, as the processor reads it.


@dataclass(frozen=True, slots=True)
class Returned:
    value: Any  # the result, as JSON read back
    wait: bool


@dataclass(frozen=True, slots=True)
class Raised:
    error: str  # "<Type>: <message>"
    trace: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The handler raised TaskFailed: its reason, result and permanence, as given."""

    reason: str
    result: dict[str, Any] | None
    permanent: bool


@dataclass(frozen=True, slots=True)
class Died:
    """The worker went away during the call (a crash, os._exit), or none could be had; `reason` says which."""

    reason: str


Done = Returned | Raised | Failed | Died


def ended(reply: dict[str, Any]) -> Done:
    """The outcome an answer that ends a call stands for."""
    if "returned" in reply:
        return Returned(json.loads(reply["returned"]), bool(reply["wait"]))
    if "failed" in reply:
        return Failed(str(reply["failed"]), reply["result"], bool(reply["permanent"]))
    return Raised(str(reply["raised"]), str(reply["trace"]))


def frame(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


def answer(reply: dict[str, Any]) -> bytes:
    """An answer's frame; what JSON lacks (in a TaskFailed's result) as its str(), as the processor stores it."""
    return frame(json.dumps(reply, default=str).encode())


def receive(sock: socket.socket) -> bytes | None:
    """The next frame (blocking: the worker's side), or None when the other end is gone."""
    header = _exactly(sock, _LENGTH.size)
    if header is None:
        return None
    return _exactly(sock, _LENGTH.unpack(header)[0])


def _exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


async def read(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next answer (the processor's side), or None when the worker is gone."""
    try:
        header = await reader.readexactly(_LENGTH.size)
        data = await reader.readexactly(_LENGTH.unpack(header)[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    reply: dict[str, Any] = json.loads(data)
    return reply
