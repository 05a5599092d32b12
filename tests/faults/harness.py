"""The fault-injection harness: real role processes against the test's own database and broker prefix.

A scenario takes the `stack` fixture (tests/faults/conftest.py) and drives it:

    async def test_a_crash_loses_nothing(stack: Stack, db: asyncpg.Connection) -> None:
        await stack.start(distributor=2)                          # subprocesses, started at once, waited for
        crasher = await stack.add("processor", crash="after_record")
        task = await new_task(db, "t", "http", stack.target.payload("t"), timeout_seconds=2)
        await crasher.died_at("after_record")                     # it SIGKILLed itself there (taskmill/crash.py)
        await stack.add("processor")
        await stack.quiesce()                                     # nothing in flight for two rescue periods
        await stack.check({task.id: 1})                           # every invariant (tests/faults/invariants.py)

- Processes: `start` several at once, `add` one (with extra env, or a crash point), `RoleProcess.kill` one by
  SIGKILL. Each writes its log to `<tmp_path>/<name>.log`; `stack.logs()` (in every failure this module raises)
  shows their tails. The stack runs with short leases (`FAST`), so the rescuer acts within seconds.
- Side effects: `stack.target` (an HTTP target recording each call's idempotency key) and `stack.commands` (a file
  command tasks append `<run id> <pid>` to), see tests/faults/target.py.
- `stack.broker`: the test's own look at the broker (queue depths, unacked counts, raw publishes, deletes).
- `close()`, the fixture's teardown, stops and reaps every process, then fails the test if a command process of
  the scenario outlived them.

Building on it: any variable given to `start`/`add` overrides the stack's (`stack.add("processor",
AMQP_URL=proxy_url)` puts one replica behind a proxy); `stack.settings` is what the processes run with;
`quiesce(waiting={"scheduled"})` and `check(..., waiting=...)` accept runs a scenario leaves waiting; `check()`
stops the processors, so call it last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aio_pika
import aiormq
import asyncpg
import httpx
from cryptography.fernet import Fernet

from taskmill.models import Task
from taskmill.settings import Settings
from taskmill.store import queue
from taskmill.store.processors import present
from taskmill.tokens import mint
from taskmill.topology import Names
from tests import services, zygote
from tests.faults import invariants, procs
from tests.faults.invariants import Expected, Report
from tests.faults.target import MARK, CommandLog, Target
from tests.helpers import free_port, new_task, role_env, wait_until

Process = asyncio.subprocess.Process

# Short leases and periods, so a lost run comes back within seconds. A run's running lease is its
# timeout_seconds + 1 s: scenarios give their tasks small timeouts.
FAST: dict[str, Any] = {
    "queued_lease_s": 3.0,
    "running_grace_s": 1.0,
    "rescue_interval_s": 0.5,
    "scheduler_interval_s": 1.0,
    "max_idle_s": 2.0,
    "publish_timeout_s": 5.0,
    "concurrency": 4,
}
ROLES = ("scheduler", "distributor", "processor", "api", "capacity")


def worker_of(pid: int) -> str:
    """The name a processor gives itself in `worker` columns (processor.service.worker_name)."""
    return f"{socket.gethostname()}:{pid}"


@dataclass(eq=False)
class RoleProcess:
    role: str
    name: str
    proc: Process
    log: Path
    # Killed or crashing on purpose: its exit is not a failure of the scenario.
    expect_exit: bool = False
    types: tuple[str, ...] = ()  # a processor's `--types` (task type names, no patterns): it is dedicated to them

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def worker(self) -> str:
        return worker_of(self.pid)

    @property
    def exited(self) -> bool:
        return self.proc.returncode is not None

    def output(self, tail: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    async def kill(self) -> None:
        """SIGKILL, as a machine or the OOM killer would; returns once it is reaped."""
        self.expect_exit = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 10)

    async def terminate(self, timeout: float = 15) -> None:
        """SIGTERM (a graceful stop), SIGKILL if it is not gone within `timeout`."""
        self.expect_exit = True
        if self.exited:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()

    async def died_at(self, point: str, timeout: float = 20) -> None:
        """Waits until the process killed itself at crash point `point`."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name} did not reach {point} in {timeout} s:\n{self.output()}") from None
        said = f"crash point {point} reached"
        assert code == -signal.SIGKILL and said in self.output(), f"{self.name} exited {code}:\n{self.output()}"


async def run_command(*argv: str, timeout: float = 60, check: bool = True, cwd: Path | None = None) -> str:
    """Runs a command without blocking the event loop (the stack's HTTP target lives in it); its output. In a
    process group of its own, all of which a timeout kills (an Erlang CLI left behind would wait forever)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise AssertionError(f"{' '.join(argv)} did not finish in {timeout} s") from None
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{text[-2000:]}")
    return text


class BrokerView:
    """The test's own connection to the broker: queue depths, unacked counts, raw publishes, deletes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = Names(settings.broker_prefix)
        self._conn: aio_pika.abc.AbstractConnection | None = None

    async def open(self) -> None:
        self._conn = await aio_pika.connect(self.settings.amqp_url)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    @contextlib.asynccontextmanager
    async def channel(self) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
        """A fresh channel (a passive declare of a missing queue closes the one it was asked on)."""
        assert self._conn is not None
        channel = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        try:
            yield channel
        finally:
            if not channel.is_closed:
                await channel.close()

    async def depth(self, queue: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of a queue, or None when it does not exist."""
        try:
            async with self.channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0

    async def ready(self, queue: str) -> int:
        return (await self.depth(queue) or (0, 0))[0]

    async def serving(self, types: Sequence[str]) -> int:
        """Processors dedicated to `types` taking work now: the consumers of their queue."""
        return (await self.depth(self.names.dedicated_queue(types)) or (0, 0))[1]

    async def unsettled(self) -> dict[str, tuple[int, int]]:
        """(ready, unacked) of every queue of this prefix, from `rabbitmqctl` (AMQP cannot tell unacked)."""
        out = await self._rabbitmqctl(
            "list_queues", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"
        )
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].startswith(self.names.prefix + "."):
                found[parts[0]] = (int(parts[1]), int(parts[2]))
        return found

    async def _rabbitmqctl(self, *args: str) -> str:
        return await run_command(*services.rabbitmqctl("-q", *args), timeout=30, cwd=Path("/"))

    async def publish(self, body: bytes, routing_key: str, message_id: str | None = None) -> None:
        """Onto the runs exchange, persistent and confirmed, as a distributor would (or as a forger would)."""
        async with self.channel() as channel:
            exchange = await channel.get_exchange(self.names.runs_exchange)
            message = aio_pika.Message(body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, routing_key=routing_key, mandatory=True)

    async def take_dead(self) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Every message in the dead-letter queue, removed from it."""
        taken = []
        async with self.channel() as channel:
            queue = await channel.declare_queue(self.names.dead_queue, passive=True)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                taken.append(message)
        return taken

    async def delete_queue(self, queue: str) -> None:
        async with self.channel() as channel:
            await channel.queue_delete(queue)


class QueueView(BrokerView):
    """The same look over the PostgreSQL transport: the `run_queue` table, on a connection of its own per question
    (the database may have restarted in between). Depths are (ready, processors listening for work); a retry
    waiting out its delay shows as a delay queue's ready message, as it would on the broker."""

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @contextlib.asynccontextmanager
    async def _db(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            yield conn
        finally:
            await conn.close()

    async def depth(self, queue: str) -> tuple[int, int] | None:
        kind = {self.names.work_queue: "work", self.names.dead_queue: "dead"}.get(queue)
        if kind is None:
            return None
        async with self._db() as conn:
            row = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM run_queue WHERE queue = $1 AND ($1 = 'dead' OR available_at <= now())),
                          (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                           AND query = 'LISTEN "taskmill_queue"')""",
                kind,
            )
        assert row is not None
        return int(row[0]), int(row[1])

    async def serving(self, types: Sequence[str]) -> int:
        """Processors dedicated to `types` taking work now: those holding their presence lock."""
        async with self._db() as conn:
            rows = await conn.fetch("SELECT worker, types FROM processors WHERE types = $1::text[]", sorted(types))
            return len(await present(conn, {r["worker"]: list(r["types"]) for r in rows}))

    async def unsettled(self) -> dict[str, tuple[int, int]]:
        async with self._db() as conn:
            waiting: int = await conn.fetchval(
                "SELECT count(*) FROM run_queue WHERE queue = 'work' AND available_at > now() AND leased_by IS NULL"
            )
        return {self.names.delay_queue(0, "any"): (waiting, 0)} if waiting else {}

    async def publish(self, body: bytes, routing_key: str, message_id: str | None = None) -> None:
        async with self._db() as conn:
            await queue.enqueue(conn, [queue.Message(routing_key, body, int(message_id) if message_id else None)])


def view_of(settings: Settings) -> Callable[[Settings], BrokerView]:
    """The harness's look at the transport the settings use."""
    return QueueView if settings.transport_name == "postgres" else BrokerView


@dataclass(eq=False)
class Stack:
    settings: Settings  # what the role processes run with (the test's database and prefix, FAST leases)
    db: asyncpg.Connection
    workdir: Path
    target: Target
    commands: CommandLog
    broker: BrokerView
    mark: str
    secret_key: str = field(default_factory=lambda: Fernet.generate_key().decode())
    jwt_secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    api_port: int = 0
    processes: list[RoleProcess] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        db: asyncpg.Connection,
        workdir: Path,
        *,
        broker_view: Callable[[Settings], BrokerView] = BrokerView,
        **fields: Any,
    ) -> Self:
        """`broker_view` makes the test's look at the broker; `fields` are a subclass's own."""
        fast = settings.model_copy(update=FAST)
        mark = f"{settings.broker_prefix}.{uuid.uuid4().hex[:6]}"
        target = Target()
        await target.start()
        broker = broker_view(fast)
        await broker.open()
        return cls(fast, db, workdir, target, CommandLog(workdir / "commands.log", mark), broker, mark, **fields)

    # -- processes ----------------------------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        s = self.settings
        env = {
            "TASKMILL_SCHEDULER_INTERVAL_S": str(s.scheduler_interval_s),
            "TASKMILL_MAX_IDLE_S": str(s.max_idle_s),
            "TASKMILL_PUBLISH_TIMEOUT_S": str(s.publish_timeout_s),
            "TASKMILL_CONCURRENCY": str(s.concurrency),
            "TASKMILL_SECRET_KEY": self.secret_key,
            "JWT_SECRET": self.jwt_secret,
            "TASKMILL_CRASH_AT": "",
        }
        return role_env(s, **(env | extra))

    async def _spawn(self, role: str, args: Iterable[str], env: dict[str, str], expect_exit: bool) -> RoleProcess:
        assert role in ROLES, role
        argv = list(args)
        name = f"{role}-{sum(1 for p in self.processes if p.role == role) + 1}"
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own descriptor
            proc = await zygote.start(
                [role, *argv], self.env(**env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        types = tuple(argv[argv.index("--types") + 1].split(",")) if "--types" in argv else ()
        process = RoleProcess(role, name, proc, log, expect_exit, types)
        self.processes.append(process)
        return process

    async def start(
        self, *, scheduler: int = 0, distributor: int = 0, processor: int = 0, api: bool = False, **env: str
    ) -> list[RoleProcess]:
        """Starts replicas of each role at once (the imports dominate; two cores share them), each with `env`
        on top of the stack's, then waits until each is connected and working."""
        if api and not self.api_port:
            self.api_port = free_port()
        wanted = [("scheduler", scheduler), ("distributor", distributor), ("processor", processor)]
        started = [await self._spawn(role, (), env, False) for role, n in wanted for _ in range(n)]
        if api:
            started.append(await self._spawn("api", ("--port", str(self.api_port)), env, False))
        await self.wait_ready(started)
        return started

    async def add(self, role: str, *args: str, crash: str = "", **env: str) -> RoleProcess:
        """One more replica, with extra environment; `crash="<point>[:<nth>]"` makes it SIGKILL itself there (it
        is then not waited for: it may reach its point before it looks ready)."""
        if crash:
            env["TASKMILL_CRASH_AT"] = crash
        process = await self._spawn(role, args, env, expect_exit=bool(crash))
        if not crash:
            await self.wait_ready([process])
        return process

    def live(self, role: str | None = None) -> list[RoleProcess]:
        return [p for p in self.processes if not p.exited and (role is None or p.role == role)]

    def by_worker(self, worker: str) -> RoleProcess:
        for p in self.processes:
            if p.worker == worker:
                return p
        raise AssertionError(f"no process of the stack is worker {worker}\n{self.logs()}")

    async def wait_ready(self, processes: Collection[RoleProcess], timeout: float = 30) -> None:
        """Until each role is at work: processors consume (a dedicated one: it said it is ready, and takes work as
        the routing sees it), distributors and schedulers listen for wake-ups, the API answers /health."""
        roles = {p.role for p in processes}
        dedicated = [p for p in processes if p.role == "processor" and p.types]

        async def ready() -> bool:
            self._fail_on_unexpected_exit()
            checks = []
            if "processor" in roles:
                general = [p for p in self.live("processor") if not p.types]
                depth = await self.broker.depth(self.broker.names.work_queue)
                checks.append(depth is not None and depth[1] >= len(general))
            for p in dedicated:
                checks.append("processor ready" in p.output(tail=100_000) and await self.broker.serving(p.types) > 0)
            for role, channel in (("distributor", "taskmill_schedule"), ("scheduler", "taskmill_tasks")):
                if role in roles:
                    checks.append(await self._listeners(channel) >= len(self.live(role)))
            if "api" in roles:
                checks.append(await self._api_healthy())
            return all(checks)

        await self._wait(ready, timeout, f"{sorted(p.name for p in processes)} to be ready")

    async def _listeners(self, channel: str) -> int:
        n: int = await self.db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
            f'LISTEN "{channel}"',
        )
        return n

    async def _api_healthy(self) -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{self.api_url}/health", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def api(self, scopes: str = "tasks:read tasks:write tasks:command") -> httpx.AsyncClient:
        """A client of the stack's API with a token of `scopes`."""
        token = mint(self.jwt_secret, "fault-tests", scopes, 600)
        return httpx.AsyncClient(base_url=self.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def _fail_on_unexpected_exit(self) -> None:
        died = [p for p in self.processes if p.exited and not p.expect_exit]
        if died:
            names = ", ".join(f"{p.name} (exit {p.proc.returncode})" for p in died)
            raise AssertionError(f"{names} stopped unexpectedly\n{self.logs()}")

    def logs(self) -> str:
        """The tail of every process's output, for failure messages."""
        return "\n".join(f"--- {p.name} (pid {p.pid}, exit {p.proc.returncode}):\n{p.output()}" for p in self.processes)

    async def _wait(self, check: Any, timeout: float, what: str) -> None:
        try:
            await wait_until(check, timeout, interval=0.1, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    # -- the database ------------------------------------------------------------------------------------------

    async def running_on(self, task_id: int, timeout: float = 15) -> RoleProcess:
        """The processor running the task's run, once one is."""
        worker: str | None = None

        async def started() -> bool:
            nonlocal worker
            self._fail_on_unexpected_exit()
            worker = await self.db.fetchval(
                "SELECT worker FROM task_schedule WHERE task_id = $1 AND status = 'running'", task_id
            )
            return worker is not None

        await self._wait(started, timeout, f"a run of task {task_id} to start")
        assert worker is not None
        return self.by_worker(worker)

    async def run_of(self, task_id: int) -> asyncpg.Record:
        row = await self.db.fetchrow(
            "SELECT id, status::text AS status, attempt, worker, error FROM task_schedule WHERE task_id = $1", task_id
        )
        assert row is not None, f"task {task_id} has no run"
        return row

    async def refused_meanwhile(
        self, n: int, what: str, timeout: float = 30, hold_s: float = 0
    ) -> tuple[list[Task], list[int]]:
        """`n` http tasks made while the broker takes no publish: waits until each run went from queued back to
        scheduled, then (after `hold_s` more) checks that none of them reached the target meanwhile. The tasks and
        their runs' ids."""
        made = [await new_task(self.db, f"during-{i}", "http", self.target.payload(f"during-{i}")) for i in range(n)]
        ids: list[int] = [
            r["id"]
            for r in await self.db.fetch(
                "SELECT id FROM task_schedule WHERE task_id = ANY($1::bigint[])", [t.id for t in made]
            )
        ]
        assert len(ids) == n

        async def reverted() -> bool:
            count: int = await self.db.fetchval(
                "SELECT count(DISTINCT run_id) FROM run_audit "
                "WHERE run_id = ANY($1::bigint[]) AND from_status = 'queued' AND to_status = 'scheduled'",
                ids,
            )
            return count == n

        await self._wait(reverted, timeout, what)
        await asyncio.sleep(hold_s)
        assert not {c.key for c in self.target.calls} & {str(i) for i in ids}, "a refused run ran meanwhile"
        return made, ids

    async def wait_ready_messages(self, queue: str, at_least: int, timeout: float = 10) -> None:
        async def enough() -> bool:
            return await self.broker.ready(queue) >= at_least

        await self._wait(enough, timeout, f"{at_least} messages ready in {queue}")

    # -- quiescence and invariants -----------------------------------------------------------------------------

    async def quiesce(self, *, waiting: Collection[str] = (), timeout: float = 60) -> None:
        """Waits until nothing moves: every run terminal (or in a status of `waiting`), no message ready in the work
        queue nor ready or unacked in a delay queue, the same state (runs, audit rows, work and dead queue depths)
        for two rescue periods.

        Unacked messages of the work queue (a quorum queue) are not asked of the broker: it counts them on a
        5 s tick. `check()` counts them instead, after stopping the processors, when they are back in the queue.
        """
        window = 2 * self.settings.rescue_interval_s
        work, dead = self.broker.names.work_queue, self.broker.names.dead_queue
        last: tuple[Any, ...] | None = None
        since = time.monotonic()
        deadline = since + timeout
        # rabbitmqctl takes a second or more: asked when a quiet spell begins, its answer counts if the spell lasts.
        # It answers for the delay queues (classic: their counts are current), not for quorum queues.
        probe: asyncio.Task[dict[str, tuple[int, int]]] | None = None
        try:
            while True:
                self._fail_on_unexpected_exit()
                busy = await self.db.fetchval(
                    "SELECT count(*) FROM task_schedule WHERE status <> ALL($1::run_status[])",
                    [*invariants.TERMINAL, *waiting],
                )
                moved = await self.db.fetchval("SELECT count(*) FROM run_audit")
                state = (busy, moved, await self.broker.depth(work), await self.broker.ready(dead))
                quiet = busy == 0 and (state[2] or (0, 0))[0] == 0
                if not quiet or state != last:
                    last, since = state, time.monotonic()
                    if probe is not None:
                        probe.cancel()
                    probe = asyncio.create_task(self.broker.unsettled()) if quiet else None
                elif probe is not None and time.monotonic() - since >= window:
                    queues = await probe
                    delay = f"{self.broker.names.prefix}.delay."  # Names.delay_queue: <prefix>.delay.<ms>.<type>
                    if not {q: n for q, n in queues.items() if q.startswith(delay) and (n[0] or n[1])}:
                        return
                    since, probe = time.monotonic(), asyncio.create_task(self.broker.unsettled())
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no quiescence after {timeout} s: {busy} runs in flight, audit rows {moved}, "
                        f"(ready, consumers) of the work queue {state[2]}, queues {await self.broker.unsettled()}\n"
                        f"{await self._non_terminal()}\n{self.logs()}"
                    )
                await asyncio.sleep(0.2)
        finally:
            if probe is not None:
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)

    async def _non_terminal(self) -> str:
        rows = await self.db.fetch(
            "SELECT id, status::text, attempt, worker, lease_until FROM task_schedule "
            "WHERE status <> ALL($1::run_status[]) ORDER BY id LIMIT 20",
            [s.value for s in invariants.TERMINAL],
        )
        return "runs not finished: " + "; ".join(str(dict(r)) for r in rows)

    def orphans(self) -> list[str]:
        """Command processes of this scenario that no live role process of the stack is an ancestor of."""
        ours = {p.pid for p in self.live()}
        return [procs.describe(pid) for pid in procs.marked(MARK, self.mark) if not ours & set(procs.ancestors(pid))]

    async def check(
        self,
        expected: Expected,
        *,
        poison: int = 0,
        repeats_allowed: Collection[int] = (),
        waiting: Collection[str] = (),
    ) -> Report:
        """Ends the scenario: stops the processors (SIGTERM, so a delivery one still held goes back to the work
        queue, where it is counted), checks every invariant (tests/faults/invariants.py), prints the report and
        fails listing each violation. Returns the report (its `repeats` name the runs whose side effect
        happened more than once)."""
        orphans = self.orphans()
        await asyncio.gather(*(p.terminate() for p in self.live("processor")))
        report = await invariants.check(
            self.db,
            expected,
            dead_letters=await self.broker.ready(self.broker.names.dead_queue),
            left_in_work_queue=await self.broker.ready(self.broker.names.work_queue),
            poison=poison,
            target=self.target,
            commands=self.commands,
            repeats_allowed=repeats_allowed,
            waiting=waiting,
            orphans=orphans,
        )
        print(report)
        assert not report.violations, f"{report}\n{self.logs()}"
        return report

    # -- teardown ----------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stops and reaps every process (SIGTERM, then SIGKILL), then fails if a command process outlived them."""
        self.target.release()  # a held call would keep a draining processor waiting for its timeout
        try:
            await asyncio.gather(*(p.terminate() for p in self.live()))
        finally:
            await self.broker.close()
            await self.target.close()
        left = [(pid, procs.describe(pid)) for pid in procs.marked(MARK, self.mark)]
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"command processes outlived the stack: {[d for _, d in left]}"
