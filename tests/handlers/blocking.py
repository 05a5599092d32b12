"""Plain `def` handlers a real processor process imports in the tests (`--import tests.handlers.blocking`): they
leave marks in a file of the test's, so a test sees what ran, in which process, and when, after the fact."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field

from taskmill import Context, handler


def mark(path: str, event: str, ctx: Context, **fields: object) -> None:
    """One JSON line: what happened, in which attempt and process, and when."""
    entry = {"event": event, "attempt": ctx.attempt, "pid": os.getpid(), "at": time.time(), **fields}
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def marks(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def alive(pid: int) -> bool:
    """Whether a process is there and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Nap(BaseModel):
    path: str
    seconds: float = Field(ge=0, le=60)
    child: bool = False  # start a `sleep` subprocess first, and mark its pid


@handler("blocking.nap", payload=Nap)
def nap(ctx: Context, payload: Nap) -> dict[str, object]:
    """Marks its start (with whether the processes of earlier starts are still there), sleeps, marks its end."""
    earlier = [int(str(m["pid"])) for m in marks(Path(payload.path)) if m["event"] == "start"]
    fields: dict[str, object] = {"earlier_alive": [pid for pid in earlier if pid != os.getpid() and alive(pid)]}
    if payload.child:
        fields["child"] = subprocess.Popen(["sleep", str(payload.seconds + 30)]).pid
    mark(payload.path, "start", ctx, **fields)
    time.sleep(payload.seconds)
    mark(payload.path, "end", ctx)
    return {"slept": payload.seconds}


class Receipt(BaseModel):
    customer_id: int
    lines: list[str]

    @property
    def total_lines(self) -> int:
        return len(self.lines)


class Order(BaseModel):
    customer_id: int = Field(ge=1)
    lines: list[str] = []
    fail: bool = False


@handler("blocking.receipt", payload=Order, timeout_seconds=30)
def receipt(ctx: Context, payload: Order) -> Receipt:
    """Its payload a model instance, its result a model; logs through ctx.log and the logging module, may raise."""
    assert isinstance(payload, Order), type(payload)
    ctx.log.info("receipt of customer %d, attempt %d, run %d", payload.customer_id, ctx.attempt, ctx.run_id)
    logging.getLogger("tests.handlers.blocking").warning("a line of the logging module, run %d", ctx.run_id)
    if payload.fail:
        ctx.log.warning("about to fail")
        raise ValueError(f"customer {payload.customer_id} has no address")
    ctx.wait_for_children()  # no children: it ends as soon as its own work is done
    return Receipt(customer_id=payload.customer_id, lines=[*payload.lines, ctx.scheduled_time.isoformat()])


class Misuse(BaseModel):
    what: str = Field(pattern="^(conn|result|exit|segfault|sys_exit)$")


@handler("blocking.misuse", payload=Misuse)
def misuse(ctx: Context, payload: Misuse) -> object:
    """Does what a def handler must not, in the way the payload names."""
    ctx.log.info("doing %s", payload.what)
    if payload.what == "conn":
        return ctx.conn.fetchval("SELECT 1")
    if payload.what == "result":
        loop: list[object] = []
        loop.append(loop)
        return {"loop": loop}
    if payload.what == "exit":
        os._exit(3)
    if payload.what == "sys_exit":
        raise SystemExit(4)
    os.kill(os.getpid(), signal.SIGSEGV)
    ctypes.string_at(0)  # not reached
    return None


@handler("blocking.pid")
def pid(ctx: Context, payload: BaseModel) -> int:
    """The process it ran in."""
    return os.getpid()


class Stubborn(BaseModel):
    path: str
    cleanup_s: float = Field(ge=0, le=60)


@handler("blocking.stubborn", payload=Stubborn)
def stubborn(ctx: Context, payload: Stubborn) -> None:
    """Sleeps until stopped, then takes `cleanup_s` to clean up (in a `finally`, which SIGTERM lets run)."""
    mark(payload.path, "start", ctx)
    try:
        time.sleep(60)
    finally:
        mark(payload.path, "cleanup", ctx)
        time.sleep(payload.cleanup_s)
        mark(payload.path, "cleaned", ctx)


@handler("blocking.stray")
def stray(ctx: Context, payload: BaseModel) -> str:
    """Returns at once, leaving a thread that logs through its ctx a moment later."""

    def late() -> None:
        time.sleep(0.3)
        ctx.log.info("a line after the call ended")

    threading.Thread(target=late, daemon=True).start()
    return "done"
