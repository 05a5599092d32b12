"""A stateful model of taskmill's roles, driven by Hypothesis through the real API and real role processes.

One stack for the whole test (tests/faults/harness.py: a scheduler, two distributors, two processors and the API, as
subprocesses on the test's own database and broker prefix); each Hypothesis example gets tasks of its own, named
with the example's tag, and its invariants concern those alone. The rules are what users, operators and faults do:

- create a task (an http call to the harness's target, with a small delay and maybe a few failures first, or a short
  command; immediate, once a few seconds ahead, or every 1-3 s; any overlap policy, a cap of 1-3 on its own or on a
  key shared with other tasks, a priority, retries, a timeout; now and then made paused), edit it (PUT), pause,
  resume, delete it, cancel a run, retry a failed or dead run, invoke a two-step workflow;
- a token without `tasks:command` tries to make a command task, or to edit one into a command (403, nothing
  changes); a request for a command run goes to the submit queue (refused: dead-lettered, no run);
- SIGKILL a processor and start another; restart the broker (the long budget only, on a private RabbitMQ node);
- wait, in small real-time steps (the roles run on the real clock).

Invariants after every step (tests/model/roles_checks.py): per concurrency key no more runs in flight than a cap
it had; a task that never allowed overlaps has one occurrence in flight at most; a paused or deleted task hands
nothing out that it had not handed out before (what fell due before a pause ends skipped); no
command task made by the token that may not, nor through the submit queue; never two calls of one run open at the
target. At the end of an example (every task deleted, the stack quiet): nothing was stranded before the deletion;
every run terminal by one legal audit path, and a dropped run dropped before it was handed out; every succeeded run
left its side effect, and one happened twice only for a run that lost a processor; no two attempts of a run
overlapped (recorded attempts, calls at the target); no more calls at once under a key than a cap it had; every
occurrence of every interval definition, from its creation, edit or resume to its edit, pause or deletion, is a
row exactly once, and no row is none of these (see `roles_checks.accounting`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aio_pika
import asyncpg
import httpx
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from taskmill.tokens import mint
from tests.conftest import isolated_settings
from tests.faults.harness import Stack
from tests.faults.servers import RabbitNode, fault_stack
from tests.model import roles_checks as checks
from tests.model.roles_checks import ExampleModel, Period, TaskModel, TimedTarget, Window

T = TypeVar("T")

MAX_TASKS = 5  # live tasks per example
LIMITED_SUB = "model-no-command"  # the token that may write tasks but not command tasks
STRANDED_SLACK_S = 5.0
# An interval task is materialized this many runs ahead, not an hour's worth: the tables, and so the checks' queries,
# stay small over a long soak; topping up (once half are left) is exercised too.
RUNS_AHEAD = "60"


class BackgroundLoop:
    """One event loop in a thread of its own for the whole test: Hypothesis's rules are synchronous, while the stack
    (its target, its subprocesses, its connections) lives in this loop, which keeps running between rules."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="roles-model")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass(eq=False)
class World:
    """What lives across examples: the stack, its clients, the private broker node (long budget)."""

    stack: Stack
    writer: httpx.AsyncClient  # tasks:read tasks:write tasks:command
    limited: httpx.AsyncClient  # tasks:read tasks:write, as LIMITED_SUB
    node: RabbitNode | None
    examples: int = 0
    dead_letters: list[aio_pika.abc.AbstractIncomingMessage] = field(default_factory=list)

    @property
    def db(self) -> asyncpg.Connection:
        return self.stack.db

    @property
    def target(self) -> TimedTarget:
        assert isinstance(self.stack.target, TimedTarget)
        return self.stack.target

    async def now(self) -> datetime:
        now: datetime = await self.db.fetchval("SELECT now()")
        return now


@asynccontextmanager
async def opened_world(template_db: str, workdir: Path, node: RabbitNode | None) -> AsyncIterator[World]:
    """The stack (on `node` when given, else the shared broker), started and ready, with its clients."""
    async with AsyncExitStack() as resources:
        settings = await resources.enter_async_context(isolated_settings(template_db))
        if node is not None:
            await node.ensure_ready()
        opened = fault_stack(settings, workdir, rabbit=node, TASKMILL_SCHEDULER_RUNS_AHEAD=RUNS_AHEAD)
        stack = await resources.enter_async_context(opened)
        await stack.target.close()  # the harness's target, replaced by one that also times each call
        stack.target = TimedTarget()
        await stack.target.start()
        await stack.start(scheduler=1, distributor=2, processor=2, api=True)

        def client(sub: str, scopes: str) -> httpx.AsyncClient:
            token = mint(stack.jwt_secret, sub, scopes, 24 * 3600)
            headers = {"Authorization": f"Bearer {token}"}
            return httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=15)

        writer = await resources.enter_async_context(client("model", "tasks:read tasks:write tasks:command"))
        limited = await resources.enter_async_context(client(LIMITED_SUB, "tasks:read tasks:write"))
        yield World(stack, writer, limited, node)


# -- what the rules draw ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A task definition as a user would send it; the model's own shape, so Hypothesis prints it readably."""

    type: str = "http"  # http | command
    kind: str = "immediate"  # immediate | once | interval
    seconds: int = 1  # once: how far ahead; interval: every
    delay_ms: int = 0  # http: how long the target takes to answer
    fail_first: int = 0  # http: the target answers 500 to the first N calls of each run
    overlap: str = "allow"
    cap: int | None = None
    shared_key: int | None = None  # with a cap: counts under the example's key 0 or 1 instead of its own
    priority: int = 0
    max_retries: int = 0
    timeout_s: float = 3.0
    active: bool = True

    def body(self, name: str, tag: str, world: World, now: datetime) -> dict[str, Any]:
        if self.type == "http":
            payload = world.target.payload(f"{tag}-{name}", delay_ms=self.delay_ms, fail_first=self.fail_first)
        else:
            payload = world.stack.commands.payload()
        schedule: dict[str, Any] = {"kind": self.kind}
        if self.kind == "once":
            schedule["at"] = (now + timedelta(seconds=self.seconds)).isoformat()
        elif self.kind == "interval":
            schedule["every_seconds"] = self.seconds
        return {
            "name": name,
            "type": self.type,
            "payload": payload,
            "schedule": schedule,
            "active": self.active,
            "overlap": self.overlap,
            "max_concurrency": self.cap,
            "concurrency_key": f"{tag}-key{self.shared_key}" if self.cap and self.shared_key is not None else None,
            "priority": self.priority,
            "max_retries": self.max_retries,
            "retry_delay_seconds": 0.3,
            "timeout_seconds": self.timeout_s,
        }


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    kind = draw(st.sampled_from(["immediate", "once", "interval", "interval"]))
    cap = draw(st.one_of(st.none(), st.integers(1, 3)))
    return Spec(
        type=draw(st.sampled_from(["http", "http", "http", "command"])),
        kind=kind,
        seconds=draw(st.integers(1, 3)) if kind == "interval" else draw(st.integers(1, 4)),
        # Below the timeout by far: a call the processor gave up on would still be open at the target beside the
        # retry's, and look like two attempts at once.
        delay_ms=draw(st.sampled_from([0, 100, 400])),
        fail_first=draw(st.sampled_from([0, 0, 1, 2])),
        overlap=draw(st.sampled_from(["allow", "skip", "queue_one", "cancel_previous"])),
        cap=cap,
        shared_key=draw(st.one_of(st.none(), st.integers(0, 1))) if cap else None,
        priority=draw(st.integers(0, 9)),
        max_retries=draw(st.integers(0, 2)),
        timeout_s=draw(st.sampled_from([2.0, 3.0])),
        active=draw(st.sampled_from([True, True, True, True, False])),
    )


# -- the machine -----------------------------------------------------------------------------------------------


class RolesMachine(RuleBasedStateMachine):
    """Set `world` and `loop` on a subclass (see `machine_for`)."""

    world: ClassVar[World]
    loop: ClassVar[BackgroundLoop]
    broker_restarts: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.world.examples += 1
        self.ex = ExampleModel(tag=f"x{self.world.examples}{uuid.uuid4().hex[:4]}")
        self.made = 0
        self.steps = 0  # calls into the loop: rules and checks
        self.failed = False  # a rule or a check raised: teardown cleans up, and checks nothing more
        # The steps as they ran, attached to a failure: a real-time example may not fail again when Hypothesis
        # replays it, and then it prints no steps of its own.
        self.log: list[str] = []

    def _step(self, what: str) -> None:
        self.log.append(what)

    def _failing(self, exc: BaseException) -> None:
        if not self.failed:
            exc.add_note(f"example {self.ex.tag}, its steps as they ran:\n  " + "\n  ".join(self.log))
        self.failed = True

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        self.steps += 1
        try:
            return self.loop.run(coro, timeout)
        except BaseException as exc:
            self._failing(exc)
            raise

    def _pick(self, which: int) -> TaskModel:
        live = self.ex.live()
        return live[which % len(live)]

    # -- users -------------------------------------------------------------------------------------------------

    @initialize(first=st.lists(specs(), min_size=1, max_size=3))
    def create_tasks(self, first: list[Spec]) -> None:
        """Every example starts with a few tasks: the rules then have something to act on from the first step."""
        self._step(f"create_tasks(first={first!r})")
        for spec in first:
            self._run(self._create(spec))

    @precondition(lambda self: len(self.ex.live()) < MAX_TASKS)
    @rule(spec=specs())
    def create_task(self, spec: Spec) -> None:
        self._step(f"create_task(spec={spec!r})")
        self._run(self._create(spec))

    async def _create(self, spec: Spec) -> None:
        w = self.world
        self.made += 1
        name = f"{self.ex.tag}-t{self.made}"
        before = await w.now()
        answer = await w.writer.post("/tasks", json=spec.body(name, self.ex.tag, w, before))
        assert answer.status_code == 201, f"create {spec}: {answer.status_code} {answer.text}"
        after = await w.now()
        row = await self._row(answer.json()["id"])
        task = TaskModel(row["id"], name, spec.type, row["kind"], False, row["schedule_from"])
        self.ex.tasks[task.id] = task
        if not spec.active:  # made paused: nothing of it may be handed out from the start
            task.windows.append(Window("paused", before))
        self._defined(task, spec, before, after)
        await self._observe(task, row, after)

    @precondition(lambda self: bool(self.ex.live()))
    @rule(which=st.integers(0, MAX_TASKS - 1), spec=specs())
    def edit_task(self, which: int, spec: Spec) -> None:
        self._step(f"edit_task(which={which!r}, spec={spec!r})")
        self._run(self._edit(self._pick(which), spec))

    async def _edit(self, task: TaskModel, spec: Spec) -> None:
        w = self.world
        spec = Spec(**{**spec.__dict__, "active": task.active})  # an edit is not a pause or a resume here
        before = await w.now()
        answer = await w.writer.put(f"/tasks/{task.id}", json=spec.body(task.name, self.ex.tag, w, before))
        assert answer.status_code == 200, f"edit {task.id} to {spec}: {answer.status_code} {answer.text}"
        after = await w.now()
        task.type = spec.type
        self._defined(task, spec, before, after)
        await self._observe(task, await self._row(task.id), after)

    @precondition(lambda self: bool(self.ex.live()))
    @rule(which=st.integers(0, MAX_TASKS - 1))
    def pause_task(self, which: int) -> None:
        self._step(f"pause_task(which={which!r})")
        self._run(self._set_active(self._pick(which), False))

    @precondition(lambda self: bool(self.ex.live()))
    @rule(which=st.integers(0, MAX_TASKS - 1))
    def resume_task(self, which: int) -> None:
        self._step(f"resume_task(which={which!r})")
        self._run(self._set_active(self._pick(which), True))

    async def _set_active(self, task: TaskModel, active: bool) -> None:
        w = self.world
        before = await w.now()
        answer = await w.writer.put(f"/tasks/{task.id}/{'active' if active else 'inactive'}")
        assert answer.status_code == 200, f"set_active {task.id} {active}: {answer.status_code} {answer.text}"
        after = await w.now()
        if active:
            for window in task.windows:
                if window.why == "paused" and window.end is None:
                    window.end = before
        await self._observe(task, await self._row(task.id), after)

    @precondition(lambda self: bool(self.ex.live()))
    @rule(which=st.integers(0, MAX_TASKS - 1))
    def delete_task(self, which: int) -> None:
        self._step(f"delete_task(which={which!r})")
        self._run(self._delete(self._pick(which)))

    async def _delete(self, task: TaskModel) -> None:
        answer = await self.world.writer.delete(f"/tasks/{task.id}")
        assert answer.status_code == 204, f"delete {task.id}: {answer.status_code} {answer.text}"
        await self._observe(task, await self._row(task.id), await self.world.now())

    @precondition(lambda self: bool(self.ex.tasks))
    @rule(which=st.integers(0, 50))
    def cancel_run(self, which: int) -> None:
        self._step(f"cancel_run(which={which!r})")
        self._run(self._cancel(which))

    async def _cancel(self, which: int) -> None:
        ids = [
            r["id"]
            for r in await self.world.db.fetch(
                "SELECT id FROM task_schedule WHERE task_id = ANY($1::bigint[]) AND status = ANY($2::run_status[]) "
                "AND scheduled_time < now() + interval '5 s' ORDER BY id",
                self.ex.task_ids(),
                ["scheduled", "queued", "running", "retrying"],
            )
        ]
        if not ids:
            return
        run = ids[which % len(ids)]
        answer = await self.world.writer.post(f"/runs/{run}/cancel")
        assert answer.status_code in (200, 409), f"cancel {run}: {answer.status_code} {answer.text}"
        if answer.status_code == 200:
            status = await self.world.db.fetchval("SELECT status::text FROM task_schedule WHERE id = $1", run)
            assert status == "cancelled", f"run {run} was cancelled (200), yet is {status}"

    @precondition(lambda self: bool(self.ex.live()))
    @rule(which=st.integers(0, 50))
    def retry_run(self, which: int) -> None:
        self._step(f"retry_run(which={which!r})")
        self._run(self._retry(which))

    async def _retry(self, which: int) -> None:
        ids = [
            r["id"]
            for r in await self.world.db.fetch(
                "SELECT id FROM task_schedule WHERE task_id = ANY($1::bigint[]) AND status IN ('failed', 'dead') "
                "ORDER BY id",
                [t.id for t in self.ex.live()],
            )
        ]
        if not ids:
            return
        run = ids[which % len(ids)]
        answer = await self.world.writer.post(f"/runs/{run}/retry")
        assert answer.status_code == 200, f"retry {run}: {answer.status_code} {answer.text}"

    @rule()
    def invoke_workflow(self) -> None:
        self._step("invoke_workflow()")
        self._run(self._invoke())

    async def _invoke(self) -> None:
        w, tag = self.world, self.ex.tag
        if self.ex.workflow is None:
            steps = [
                {"name": "a", "type": "http", "payload": w.target.payload(f"{tag}-wf-a", delay_ms=100)},
                {"name": "b", "type": "http", "payload": w.target.payload(f"{tag}-wf-b"), "depends_on": ["a"]},
            ]
            answer = await w.writer.post("/workflows", json={"name": f"{tag}-wf", "tasks": steps})
            assert answer.status_code == 201, f"declare workflow: {answer.status_code} {answer.text}"
            self.ex.workflow = f"{tag}-wf"
            self.ex.step_ids = [
                r["id"] for r in await w.db.fetch("SELECT id FROM tasks WHERE workflow_id = $1", answer.json()["id"])
            ]
        answer = await w.writer.post(f"/workflows/{self.ex.workflow}/invoke")
        assert answer.status_code in (201, 409), f"invoke workflow: {answer.status_code} {answer.text}"

    # -- what scopes forbid ------------------------------------------------------------------------------------

    @rule(edit=st.booleans())
    def command_without_scope(self, edit: bool) -> None:
        self._step(f"command_without_scope(edit={edit!r})")
        self._run(self._command_without_scope(edit))

    async def _command_without_scope(self, edit: bool) -> None:
        w = self.world
        now = await w.now()
        http = [t for t in self.ex.live() if t.type == "http"]
        if edit and http:
            task = http[0]
            answer = await w.limited.put(f"/tasks/{task.id}", json=Spec(type="command").body(task.name, "", w, now))
            assert answer.status_code == 403, f"a command edit without tasks:command: {answer.status_code}"
            kind = await w.db.fetchval("SELECT type FROM tasks WHERE id = $1", task.id)
            assert kind == "http", f"task {task.id} is {kind} after a refused edit into a command"
            return
        name = f"{self.ex.tag}-forbidden"
        answer = await w.limited.post("/tasks", json=Spec(type="command").body(name, "", w, now))
        assert answer.status_code == 403, f"a command task without tasks:command: {answer.status_code} {answer.text}"
        made = await w.db.fetchval("SELECT count(*) FROM tasks WHERE name = $1", name)
        assert made == 0, f"a refused command task {name!r} was made all the same"

    @rule()
    def submit_command(self) -> None:
        self._step("submit_command()")
        self._run(self._submit_command())

    async def _submit_command(self) -> None:
        """A request for a command run on `<prefix>.submit`: refused to the dead-letter queue, no run made."""
        w = self.world
        key = f"{self.ex.tag}-submit-{uuid.uuid4().hex[:6]}"
        body = json.dumps({"v": 1, "type": "command", "payload": {"argv": ["true"]}, "idempotency_key": key}).encode()
        async with w.stack.broker.channel() as channel:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=w.stack.broker.names.submit_queue,
            )
        # After a broker restart the distributor's consumer of the submit queue comes back with its robust channel:
        # the long budget saw a refusal 16 s after a request published just after two restarts in a row.
        deadline = time.monotonic() + (60 if self.broker_restarts else 15)
        while not any(m.body == body for m in w.dead_letters):
            made = await w.db.fetchval("SELECT count(*) FROM tasks WHERE created_by = 'submit' AND type = 'command'")
            assert not made, "the submit queue made a command task"
            assert time.monotonic() < deadline, "a command request on the submit queue was neither refused nor run"
            await asyncio.sleep(0.2)
            w.dead_letters += await w.stack.broker.take_dead()
        # The reason goes with it; or, when the distributor could not publish the dead letter (just after a broker
        # restart), the broker dead-letters the rejected request itself, without one (distributor/requests.py).
        headers = next(m for m in w.dead_letters if m.body == body).headers or {}
        reason = str(headers.get("x-taskmill-reason", ""))
        assert "command" in reason or "x-first-death-queue" in headers, headers

    # -- faults and time ---------------------------------------------------------------------------------------

    @rule(which=st.integers(0, 1))
    def kill_processor(self, which: int) -> None:
        self._step(f"kill_processor(which={which!r})")
        self._run(self._kill(which))

    async def _kill(self, which: int) -> None:
        stack = self.world.stack
        live = [p for p in stack.live("processor") if not p.types]
        await live[which % len(live)].kill()
        await stack.add("processor")

    @precondition(lambda self: self.broker_restarts)
    @rule(down_s=st.sampled_from([0.0, 1.0, 3.0]))
    def restart_broker(self, down_s: float) -> None:
        self._step(f"restart_broker(down_s={down_s!r})")
        self._run(self._restart_broker(down_s), timeout=300)

    async def _restart_broker(self, down_s: float) -> None:
        node = self.world.node
        assert node is not None
        await node.stop()
        await asyncio.sleep(down_s)
        await node.start()

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0]))
    def wait(self, seconds: float) -> None:
        self._step(f"wait(seconds={seconds!r})")
        self._run(self._wait(seconds))

    # The same as `wait`, longer: a second rule, so that time passes in about one step of six (Hypothesis draws the
    # rules evenly), and schedules of a few seconds come due within an example.
    @rule(seconds=st.sampled_from([2.0, 3.0, 4.0]))
    def wait_longer(self, seconds: float) -> None:
        self._step(f"wait_longer(seconds={seconds!r})")
        self._run(self._wait(seconds))

    async def _wait(self, seconds: float) -> None:
        """Real time passes; the open calls at the target are looked at every quarter second meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(0.25, left))
            problems = checks.calls_at_once(self.world.target.spans, self.ex.tag)
            assert not problems, "\n".join(problems)

    # -- invariants --------------------------------------------------------------------------------------------

    @invariant()
    def holds(self) -> None:
        problems = self._run(self._step_checks())
        if problems:
            error = AssertionError("violated after this step:\n  - " + "\n  - ".join(problems))
            self._failing(error)
            raise error

    async def _step_checks(self) -> list[str]:
        w, ex = self.world, self.ex
        return [
            *await checks.caps_in_flight(w.db, ex),
            *await checks.overlap_in_flight(w.db, ex),
            *await checks.held_start_nothing(w.db, ex),
            *await checks.scopes_kept(w.db, ex, LIMITED_SUB),
            *checks.calls_at_once(w.target.spans, ex.tag),
        ]

    def teardown(self) -> None:
        """Deletes what the example made, waits until nothing moves, then checks how everything ended. After a
        failure it only cleans up (as best it can: an error of its own would hide the failure)."""
        if self.failed:
            try:
                self.loop.run(self._clean_up(), timeout=240)
            except Exception as exc:
                print(f"cleaning up after the failure failed too: {exc!r}")
            return
        problems = self._run(self._finish(), timeout=240)
        if problems:
            error = AssertionError("violated at the end of the example:\n  - " + "\n  - ".join(problems))
            self._failing(error)
            raise error

    async def _clean_up(self) -> None:
        w, ex = self.world, self.ex
        for task in ex.live():
            await self._delete(task)
        if ex.workflow is not None:
            answer = await w.writer.delete(f"/workflows/{ex.workflow}")
            assert answer.status_code == 204, f"delete workflow: {answer.status_code} {answer.text}"
        await w.stack.quiesce(timeout=90)

    async def _finish(self) -> list[str]:
        w, ex = self.world, self.ex
        problems = await checks.stranded(w.db, ex, STRANDED_SLACK_S)
        await self._clean_up()
        runs = await checks.runs_of(w.db, ex)
        ran_as = {
            r["run_id"]: r["type"]
            for r in await w.db.fetch(
                "SELECT DISTINCT ON (run_id) run_id, type FROM task_results WHERE run_id = ANY($1::bigint[]) "
                "AND status = 'succeeded' ORDER BY run_id, attempt DESC",
                [r["id"] for r in runs],
            )
        }
        spans = [s for s in w.target.spans if s.call.path.startswith(ex.tag + "-")]
        problems += await checks.paths(w.db, ex, runs)
        problems += checks.effects(runs, ran_as, [s.call for s in spans], w.stack.commands, ex.tag)
        problems += await checks.attempts_apart(w.db, runs, spans)
        problems += await checks.caps_over_time(w.db, ex, runs, spans)
        problems += await checks.held_start_nothing(w.db, ex)
        lead = timedelta(seconds=w.stack.settings.dispatch_lead_s)
        for task in ex.tasks.values():
            problems += checks.accounting(task, [r for r in runs if r["task_id"] == task.id], lead)
        statuses = Counter(r["status"] for r in runs)
        print(
            f"example {ex.tag}: {self.steps} steps, {len(ex.tasks)} tasks, {len(runs)} runs "
            f"({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}), {len(spans)} calls at the target, "
            f"{len(problems)} violations"
        )
        return problems

    # -- the model's bookkeeping -------------------------------------------------------------------------------

    async def _row(self, task_id: int) -> asyncpg.Record:
        row = await self.world.db.fetchrow(
            "SELECT id, active, schedule_kind::text AS kind, every_seconds, schedule_from, deleted_at "
            "FROM tasks WHERE id = $1",
            task_id,
        )
        assert row is not None, f"no task {task_id}"
        return row

    def _defined(self, task: TaskModel, spec: Spec, before: datetime, after: datetime) -> None:
        """A definition was sent (created or edited): its policies join what the task ever had."""
        task.caps.add(spec.cap)
        task.overlaps.add(spec.overlap)
        if spec.kind == "once":
            at = before + timedelta(seconds=spec.seconds)
            task.one_offs.append((at, at))
        elif spec.kind == "immediate":
            task.one_offs.append((before, after))

    async def _observe(self, task: TaskModel, row: asyncpg.Record, after: datetime) -> None:
        """The task's row after a change: an interval definition ends when its schedule restarts (an edit, a pause,
        a resume all set schedule_from) or the task is deleted, and a new one begins if it is active; a pause or a
        deletion opens a window in which it may hand nothing new out."""
        restarted = row["schedule_from"] != task.schedule_from or not task.periods
        deleted = row["deleted_at"] is not None
        current = task.periods[-1] if task.periods and task.periods[-1].end is None else None
        if current is not None and (restarted or deleted or not row["active"]):
            current.end = row["deleted_at"] if deleted else row["schedule_from"]
            current.ended_by = "delete" if deleted else "edit, pause or resume"
        if task.active and not row["active"] and not deleted:
            task.windows.append(Window("paused", after))
        if deleted:
            task.windows.append(Window("deleted", after))
            task.deleted_at = row["deleted_at"]
        elif row["kind"] == "interval" and row["active"] and (restarted or current is None):
            task.periods.append(Period(row["every_seconds"], row["schedule_from"]))
        task.active, task.kind, task.schedule_from = row["active"], row["kind"], row["schedule_from"]


def machine_for(world: World, loop: BackgroundLoop, *, broker_restarts: bool) -> type[RolesMachine]:
    attrs = {"world": world, "loop": loop, "broker_restarts": broker_restarts}
    return type("RolesMachine", (RolesMachine,), attrs)
