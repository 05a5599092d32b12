"""A stateful model of the pipeline's database half, driven by Hypothesis through the roles' own store calls.

What is driven, in random order, on one database whose clock the test moves (tests/model/clock.py):
- users and operators: create tasks (interval, cron, once, immediate; every overlap policy, caps per task or per
  shared key, misfire policies, paused or not), edit them, pause, resume, delete, cancel a run, retry a failed or
  dead run;
- the scheduler's materialization (`scheduler.materialize.materialize`) and the distributor's claim
  (`taskmill.store.runs.claim_due`, claim_due_runs in PL/pgSQL), a publish that fails (the run goes back to the
  claim), the rescuer's passes (lost processors, waiting runs, owed dead letters);
- processors: start a delivered message (the compare-and-set into running), finish it (succeeded, failed, a retry,
  dead), die holding it, come back as a zombie that tries to record what it ran.

The invariants, checked after every step:
- caps: a run handed out finds its key's runs in flight within its own task's cap, and each key's slot count equals
  the runs in flight under it;
- overlap: a task whose policy is not `allow` never has two of its scheduled occurrences in flight at once;
- a paused or deleted task is never handed out a run (an operator's retry excepted: it runs whatever the task);
- one attempt at a time: a start is won only when no live processor holds the run, and a processor the rescuer
  took a run from cannot record its outcome;
- a skipped run says why.
At the end of each example, after the pipeline is drained at the final clock: every occurrence each definition of a
recurring task owed, from its start (creation, edit or resume) to its end (edit, pause, deletion or the clock),
is a row exactly once, and none other is; every run that fell due has ended (ran, skipped or cancelled) unless a
pause holds it; no dead letter is left owed.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from croniter import croniter
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from scheduler.materialize import materialize
from taskmill.models import Schedule, TaskCreate
from taskmill.settings import Settings
from taskmill.spawn import Parent, SpawnError, SpawnSpec, spawn
from taskmill.states import RunState, ScheduleKind
from taskmill.store import runs as store_runs
from taskmill.store import tasks as store_tasks
from taskmill.store import workflows as store_workflows
from taskmill.workflows import Step, WorkflowCreate
from tests.faults import invariants
from tests.model import clock

T = TypeVar("T")

IN_FLIGHT = ("queued", "running", "retrying")
ENDED = ("succeeded", "failed", "dead", "cancelled", "skipped")
LEASE_S = 30.0  # a started run's lease, and the claim's: past it (by the test's clock) the rescuer takes the run
KEYS = ("shared-a", "shared-b")


class Loop:
    """An event loop in a thread of its own, so synchronous Hypothesis rules can await the store calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="model-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Period:
    """One definition of a recurring task, in force from `start` until `end` (None: still)."""

    kind: ScheduleKind
    every: int | None
    cron: str | None
    start: datetime
    end: datetime | None = None

    def owed(self, until: datetime) -> list[datetime]:
        """Its occurrences in [start, min(end, until)): an oracle of its own, not the scheduler's code."""
        stop = min(self.end or until, until)
        if self.kind is ScheduleKind.INTERVAL:
            assert self.every is not None
            out, k = [], 1
            while (t := self.start + timedelta(seconds=self.every * k)) < stop:
                out.append(t)
                k += 1
            return out
        assert self.cron is not None
        it = croniter(self.cron, self.start)
        out = []
        while (t := it.get_next(datetime)) < stop:
            if t > self.start:
                out.append(t)
        return out


@dataclass
class ModelTask:
    id: int
    spec: TaskCreate
    periods: list[Period] = field(default_factory=list)
    deleted: bool = False

    @property
    def active(self) -> bool:
        return self.spec.active and not self.deleted

    @property
    def recurring(self) -> bool:
        return self.spec.schedule.kind in (ScheduleKind.CRON, ScheduleKind.INTERVAL)

    def close_period(self, at: datetime) -> None:
        if self.periods and self.periods[-1].end is None:
            self.periods[-1].end = at


@dataclass(frozen=True)
class Message:
    """A run's message as a processor would receive it: the attempt it starts."""

    run_id: int
    scheduled_time: datetime
    attempt: int


@dataclass
class Holder:
    """A processor running an attempt."""

    worker: str
    message: Message
    spawned: bool = False  # it spawned children: it ends waiting for them, not succeeded


# -- what users ask for ----------------------------------------------------------------------------------------

schedules = st.one_of(
    st.builds(lambda s: Schedule(kind=ScheduleKind.INTERVAL, every_seconds=s), st.sampled_from([20, 45, 60, 150])),
    st.builds(lambda c: Schedule(kind=ScheduleKind.CRON, cron=c), st.sampled_from(["* * * * *", "*/2 * * * *"])),
    st.just(Schedule(kind=ScheduleKind.IMMEDIATE)),
    st.builds(lambda s: ("once", s), st.integers(0, 300)),  # made into `at` from the clock when used
)


@st.composite
def task_specs(draw: st.DrawFn) -> dict[str, Any]:
    cap = draw(st.sampled_from([None, None, 1, 2]))
    return {
        "schedule": draw(schedules),
        "overlap": draw(st.sampled_from(["allow", "skip", "queue_one", "cancel_previous"])),
        "max_concurrency": cap,
        "concurrency_key": draw(st.sampled_from([None, *KEYS])) if cap is not None else None,
        "misfire": draw(st.sampled_from(["skip", "once", "all"])),
        "misfire_grace_seconds": draw(st.sampled_from([15, 90, 600])),
        "catchup_window_seconds": draw(st.sampled_from([120, 86_400])),
        "priority": draw(st.integers(0, 9)),
        "active": draw(st.sampled_from([True, True, False])),
    }


class ClaimMachine(RuleBasedStateMachine):
    """Set `loop`, `pool` and `settings` on the class before running (tests/model/test_claim.py)."""

    loop: Loop
    pool: asyncpg.Pool
    settings: Settings
    examples = 0

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[int, ModelTask] = {}
        self.messages: list[Message] = []  # published, not yet delivered
        self.holders: dict[int, Holder] = {}  # run id -> the live processor running it
        self.zombies: list[Holder] = []  # processors the rescuer took a run from, still believing they run it
        self.owed_letters: list[int] = []  # dead runs whose letter a processor is about to publish
        self.now = datetime.now(UTC)
        self.violations: list[str] = []
        self.names = 0
        self.workers = 0
        self.workflow: int | None = None  # the example's workflow, made at its first invoke
        self.invoked: list[int] = []  # workflow runs

    # -- plumbing ----------------------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run(coro)

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.pool.fetch(sql, *args)

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return self.run(self._fetch(sql, *args))

    def _spec(self, drawn: dict[str, Any]) -> TaskCreate:
        fields = dict(drawn)
        schedule = fields.pop("schedule")
        if isinstance(schedule, tuple):  # ("once", seconds ahead)
            schedule = Schedule(kind=ScheduleKind.ONCE, at=self.now + timedelta(seconds=schedule[1]))
        self.names += 1
        return TaskCreate(name=f"m{self.names}", type="noop", payload={}, schedule=schedule, **fields)

    def _worker(self) -> str:
        self.workers += 1
        return f"model-worker-{self.workers}"

    def _schedule_from(self, task_id: int) -> datetime:
        rows = self.fetch("SELECT schedule_from FROM tasks WHERE id = $1", task_id)
        at: datetime = rows[0]["schedule_from"]
        return at

    def _open_period(self, task: ModelTask) -> None:
        s = task.spec.schedule
        if task.active and task.recurring:
            task.periods.append(Period(s.kind, s.every_seconds, s.cron, self._schedule_from(task.id)))

    # -- the start of each example ----------------------------------------------------------------------------

    @initialize()
    def fresh_database(self) -> None:
        type(self).examples += 1
        # The same instant of the day in every example, so a sequence of steps replays alike (Hypothesis shrinks
        # by replaying); a fraction of a second on it: no occurrence falls on the instant a definition starts or ends.
        self.now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=370_000)
        self.run(self._reset())

    async def _reset(self) -> None:
        tables = await self.pool.fetchval(
            "SELECT string_agg(format('%I', tablename), ', ') FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT IN ('schema_migrations', 'run_transitions', 'task_types') "
            "AND tablename NOT LIKE 'task\\_schedule\\_%' AND tablename NOT LIKE 'task\\_results\\_%' "
            "AND tablename NOT LIKE 'run\\_audit\\_%'"
        )
        await self.pool.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        await clock.set_time(self.pool, self.now)

    # -- users and operators ----------------------------------------------------------------------------------

    @rule(drawn=task_specs())
    def create(self, drawn: dict[str, Any]) -> None:
        spec = self._spec(drawn)

        async def go() -> int:
            async with self.pool.acquire() as conn:
                return (await store_tasks.create_task(conn, spec)).id

        task = ModelTask(self.run(go()), spec)
        self.tasks[task.id] = task
        self._open_period(task)

    def _live(self) -> list[ModelTask]:
        return [t for t in self.tasks.values() if not t.deleted]

    @precondition(lambda self: self._live())
    @rule(pick=st.integers(0, 99), drawn=task_specs())
    def edit(self, pick: int, drawn: dict[str, Any]) -> None:
        task = choose(self._live(), pick)
        spec = self._spec(drawn).model_copy(update={"name": task.spec.name})

        async def go() -> None:
            async with self.pool.acquire() as conn:
                await store_tasks.update_task(conn, task.id, spec)

        self.run(go())
        task.close_period(self.now)
        task.spec = spec
        self._open_period(task)

    @precondition(lambda self: self._live())
    @rule(pick=st.integers(0, 99), active=st.booleans())
    def pause_or_resume(self, pick: int, active: bool) -> None:
        task = choose(self._live(), pick)

        async def go() -> None:
            async with self.pool.acquire() as conn:
                await store_tasks.set_active(conn, task.id, active)

        self.run(go())
        if task.recurring:
            task.close_period(self.now)
        task.spec = task.spec.model_copy(update={"active": active})
        if task.recurring:
            self._open_period(task)

    @precondition(lambda self: self._live())
    @rule(pick=st.integers(0, 99))
    def delete(self, pick: int) -> None:
        task = choose(self._live(), pick)

        async def go() -> None:
            async with self.pool.acquire() as conn:
                await store_tasks.delete_task(conn, task.id)

        self.run(go())
        task.close_period(self.now)
        task.deleted = True

    def _runs(self, statuses: tuple[str, ...]) -> list[asyncpg.Record]:
        return self.fetch(
            "SELECT id, scheduled_time, attempt, status::text AS status FROM task_schedule "
            "WHERE status::text = ANY($1::text[]) ORDER BY id",
            list(statuses),
        )

    @rule(pick=st.integers(0, 99))
    def cancel(self, pick: int) -> None:
        runs = self._runs(("scheduled", "queued", "running", "retrying"))
        if runs:
            run = choose(runs, pick)

            async def go() -> None:
                async with self.pool.acquire() as conn:
                    await store_runs.cancel_run(conn, run["id"])

            self.run(go())
            # Its processor learns of it (processor/cancel.py) and stops it: it records nothing.
            self.holders.pop(run["id"], None)

    @rule(pick=st.integers(0, 99))
    def retry(self, pick: int) -> None:
        runs = self._runs(("failed", "dead"))
        if runs:
            run = choose(runs, pick)

            async def go() -> None:
                async with self.pool.acquire() as conn:
                    await store_runs.retry_run(conn, run["id"])

            self.run(go())

    @rule(second_fails_on=st.booleans())
    def invoke_workflow(self, second_fails_on: bool) -> None:
        """A run of a three-step workflow: `a`, then `b` after it, and `c` after both (`c` runs whatever `b` ends
        as when `second_fails_on`)."""

        async def go() -> int | None:
            async with self.pool.acquire() as conn:
                if self.workflow is None:
                    spec = WorkflowCreate(
                        name=f"wf{type(self).examples}",
                        tasks=[
                            Step(name="a", type="noop"),
                            Step(name="b", type="noop", depends_on=["a"], continue_on_failure=second_fails_on),
                            Step(name="c", type="noop", depends_on=["a", "b"]),
                        ],
                    )
                    self.workflow = (await store_workflows.create_workflow(conn, spec)).workflow.id
                return await store_workflows.invoke(conn, self.workflow, self.now)

        if (run_id := self.run(go())) is not None:
            self.invoked.append(run_id)

    @precondition(lambda self: self.invoked)
    @rule(pick=st.integers(0, 99))
    def cancel_workflow_run(self, pick: int) -> None:
        run_id = choose(self.invoked, pick)

        async def go() -> None:
            async with self.pool.acquire() as conn:
                await store_workflows.cancel_workflow_run(conn, run_id)

        self.run(go())
        # Its steps' processors learn of it and stop them: they record nothing.
        for r in self.fetch("SELECT id FROM task_schedule WHERE workflow_run_id = $1", run_id):
            self.holders.pop(r["id"], None)

    # -- the clock, the scheduler, the distributor --------------------------------------------------------------

    @rule(seconds=st.sampled_from([1, 5, 20, 61, 200, 700]))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self.run(clock.set_time(self.pool, self.now))

    @rule()
    def schedule(self) -> None:
        self.run(materialize(self.pool, self.settings, self.now))

    @rule(batch=st.sampled_from([1, 3, 100]))
    def claim(self, batch: int) -> None:
        self._claim(batch)

    def _claim(self, batch: int) -> list[Message]:
        async def go() -> list[store_runs.Outbound]:
            async with self.pool.acquire() as conn, conn.transaction():
                return await store_runs.claim_due(conn, batch, LEASE_S, 0.0, None)

        out = self.run(go())
        made = self._messages([o.run_id for o in out])
        self._check_handed_out([m.run_id for m in made])
        self.messages += made
        return made

    def _messages(self, run_ids: list[int]) -> list[Message]:
        rows = self.fetch("SELECT id, scheduled_time, attempt FROM task_schedule WHERE id = ANY($1::bigint[])", run_ids)
        return [Message(r["id"], r["scheduled_time"], r["attempt"] + 1) for r in rows]

    @precondition(lambda self: self.messages)
    @rule(pick=st.integers(0, 99), backoff=st.sampled_from([0, 30]))
    def publish_fails(self, pick: int, backoff: int) -> None:
        """The broker refused a message the claim just made: its run goes back to the claim after `backoff` s (so
        a later occurrence may be handed out before it)."""
        message = choose(self.messages, pick)
        self.messages.remove(message)

        async def go() -> None:
            async with self.pool.acquire() as conn:
                await store_runs.revert_to_scheduled(conn, [message.run_id], backoff)

        self.run(go())

    @rule()
    def rescue(self) -> None:
        """The rescuer's passes: running runs past their lease (their processor is taken for dead), queued or
        retrying runs whose message never started them, dead runs whose letter is owed."""

        async def go() -> tuple[list[store_runs.Outbound], list[store_runs.Outbound], list[store_runs.Outbound]]:
            async with self.pool.acquire() as conn:
                lost = await store_runs.rescue_lost(conn, 100, LEASE_S, 1)
                waiting = await store_runs.rescue_waiting(conn, 100, LEASE_S)
                letters = await store_runs.rescue_dead_letters(conn, 100, LEASE_S)
                await store_runs.letters_sent(conn, [o.run_id for o in letters])
                return lost, waiting, letters

        lost, waiting, _ = self.run(go())
        for o in lost:
            if (holder := self.holders.pop(o.run_id, None)) is not None:
                self.zombies.append(holder)
        self.messages += self._messages([o.run_id for o in lost + waiting if o.status is not RunState.DEAD])

    # -- processors -------------------------------------------------------------------------------------------

    @precondition(lambda self: self.messages)
    @rule(pick=st.integers(0, 99), keep=st.booleans())
    def deliver(self, pick: int, keep: bool) -> None:
        """A processor receives a message and tries to start its attempt. `keep`: the broker delivers it again
        later as well (a redelivery), which must never start a second attempt."""
        message = choose(self.messages, pick)
        if not keep:
            self.messages.remove(message)
        worker = self._worker()
        request = store_runs.StartRequest(message.run_id, message.attempt, LEASE_S, message.scheduled_time)

        async def go() -> store_runs.Start:
            async with self.pool.acquire() as conn:
                return (await store_runs.start_runs(conn, worker, [request]))[0]

        if self.run(go()) is store_runs.Start.WON:
            if (other := self.holders.get(message.run_id)) is not None:
                self.violations.append(f"run {message.run_id}: {worker} started it while {other.worker} runs it")
            self.holders[message.run_id] = Holder(worker, message)

    @precondition(lambda self: self.holders or self.zombies)
    @rule(pick=st.integers(0, 99), outcome=st.sampled_from(["succeeded", "failed", "retrying", "dead"]))
    def finish(self, pick: int, outcome: str) -> None:
        holders = [*self.holders.values(), *self.zombies]
        holder = choose(holders, pick)
        zombie = holder in self.zombies
        m = holder.message
        status = RunState(outcome)
        if holder.spawned and status is RunState.SUCCEEDED:
            status = RunState.WAITING  # processor/record.py: a run that spawned waits for its children
        done = outcome_of(m, status, self.now)

        async def go() -> bool:
            async with self.pool.acquire() as conn:
                return (await store_runs.finish_runs(conn, [done]))[0]

        recorded = self.run(go())
        if zombie:
            self.zombies.remove(holder)
            if recorded:
                self.violations.append(f"run {m.run_id}: {holder.worker}, whose run was rescued, recorded it")
            return
        del self.holders[m.run_id]
        if recorded and holder.spawned and status is RunState.SUCCEEDED:
            self.violations.append(f"run {m.run_id}: it spawned children, yet its success was recorded at once")
        if recorded and status is RunState.RETRYING:  # its processor publishes the retry, delayed
            self.messages.append(Message(m.run_id, m.scheduled_time, m.attempt + 1))
        if recorded and status is RunState.DEAD:
            self.owed_letters.append(m.run_id)

    @precondition(lambda self: self.holders)
    @rule(pick=st.integers(0, 99), children=st.integers(1, 3), chain=st.booleans())
    def spawn_children(self, pick: int, children: int, chain: bool) -> None:
        """A running run spawns children (`chain`: each depends on the one before), as a handler or a command's
        spawn file does."""
        holder = self.holders[choose(sorted(self.holders), pick)]
        m = holder.message
        task_id = self.fetch("SELECT task_id FROM task_schedule WHERE id = $1", m.run_id)[0]["task_id"]
        self.names += 1
        specs = [
            SpawnSpec(
                type="noop", key=f"c{self.names}-{i}", depends_on=[f"c{self.names}-{i - 1}"] if chain and i else []
            )
            for i in range(children)
        ]

        async def go() -> None:
            async with self.pool.acquire() as conn, conn.transaction():
                await spawn(conn, Parent(m.run_id, task_id, m.scheduled_time, 10, 1000), specs)

        try:
            self.run(go())
        except SpawnError:
            return  # a cancelled parent spawns no more: the processor is told, and stops it
        holder.spawned = True

    @precondition(lambda self: self.owed_letters)
    @rule(confirmed=st.booleans())
    def dead_letter(self, confirmed: bool) -> None:
        run_id = self.owed_letters.pop(0)

        async def go() -> None:
            async with self.pool.acquire() as conn:
                if confirmed:
                    await store_runs.letters_sent(conn, [run_id])
                else:
                    await store_runs.letters_refused(conn, [run_id])

        self.run(go())

    @precondition(lambda self: self.holders)
    @rule(pick=st.integers(0, 99))
    def processor_dies(self, pick: int) -> None:
        """SIGKILL: it records nothing more; its attempt stays running until the lease runs out and the rescuer
        takes it. (A processor that only stalls past its lease keeps running it: the rescuer makes it a zombie.)"""
        run_id = choose(sorted(self.holders), pick)
        del self.holders[run_id]

    # -- invariants -------------------------------------------------------------------------------------------

    def _check_handed_out(self, run_ids: list[int]) -> None:
        """What a claim handed out, checked against the state it left."""
        if not run_ids:
            return
        rows = self.fetch(
            """
            SELECT s.id, s.task_id, s.backfill, s.concurrency_key, s.scheduled_time, t.active,
                   t.deleted_at IS NOT NULL AS deleted,
                   t.overlap, t.max_concurrency,
                   (SELECT count(*) FROM task_schedule o
                    WHERE o.concurrency_key = s.concurrency_key AND o.status::text = ANY($2::text[])) AS key_in_flight,
                   (SELECT array_agg(o.id) FROM task_schedule o
                    WHERE o.task_id = s.task_id AND o.id <> s.id AND NOT o.backfill
                      AND o.status::text = ANY($2::text[])) AS siblings
            FROM task_schedule s JOIN tasks t ON t.id = s.task_id
            WHERE s.id = ANY($1::bigint[])
            """,
            run_ids,
            list(IN_FLIGHT),
        )
        # The claim takes a key's runs in time order, each while the runs in flight and those taken before it leave
        # room under its own task's cap: the runs of this claim after it are not counted against it.
        rows = sorted(rows, key=lambda r: (r["scheduled_time"], r["id"]))
        taken: dict[str, int] = {}
        for r in rows:
            if r["concurrency_key"] is not None:
                taken[r["concurrency_key"]] = taken.get(r["concurrency_key"], 0) + 1
        before: dict[str, int] = {}
        for r in rows:
            if not r["backfill"] and (not r["active"] or r["deleted"]):
                state = "deleted" if r["deleted"] else "paused"
                self.violations.append(f"run {r['id']} of {state} task {r['task_id']} was handed out")
            cap, key = r["max_concurrency"], r["concurrency_key"]
            if cap is not None and key is not None:
                # In flight when it was taken: those before this claim, and those this claim took before it.
                ahead = r["key_in_flight"] - taken[key] + before.get(key, 0)
                before[key] = before.get(key, 0) + 1
                if ahead >= cap:
                    self.violations.append(
                        f"run {r['id']} handed out with {ahead} runs in flight under {key} ahead of it, at its "
                        f"task's cap {cap}"
                    )
            if r["overlap"] != "allow" and not r["backfill"] and r["siblings"]:
                self.violations.append(
                    f"run {r['id']} of task {r['task_id']} (overlap {r['overlap']}) handed out while its runs "
                    f"{r['siblings']} are in flight"
                )

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "pool") or not (self.tasks or self.invoked):
            assert not self.violations, self.violations
            return
        for r in self.fetch(
            """
            SELECT c.key, c.held, (SELECT count(*) FROM task_schedule s
                                   WHERE s.concurrency_key = c.key AND s.status::text = ANY($1::text[])) AS actual
            FROM concurrency_slots c
            """,
            list(IN_FLIGHT),
        ):
            if r["held"] != r["actual"]:
                self.violations.append(f"key {r['key']}: slots held {r['held']}, runs in flight {r['actual']}")
        for r in self.fetch("SELECT id FROM task_schedule WHERE status = 'skipped' AND error IS NULL"):
            self.violations.append(f"run {r['id']} was skipped without a reason")
        for r in self.fetch(
            """
            SELECT c.id, c.parent_id, c.status::text AS status FROM task_schedule c
            JOIN task_schedule p ON p.id = c.parent_id
            WHERE p.status = 'cancelled' AND c.status::text <> ALL($1::text[])
            """,
            list(ENDED),
        ):
            self.violations.append(f"run {r['id']} is {r['status']}, its parent run {r['parent_id']} cancelled")
        for r in self.fetch(
            """
            SELECT p.id FROM task_schedule p WHERE p.status = 'waiting'
              AND NOT EXISTS (SELECT 1 FROM task_schedule c WHERE c.parent_id = p.id
                              AND c.status::text <> ALL($1::text[]))
            """,
            list(ENDED),
        ):
            self.violations.append(f"run {r['id']} is still waiting, and every child of it has ended")
        assert not self.violations, "\n".join(self.violations)

    # -- the end of each example ------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if (self.tasks or self.invoked) and not self.violations:
                self._account(self._drain())
            assert not self.violations, "\n".join(self.violations)
        finally:
            self.tasks.clear()

    def _drain(self) -> datetime:
        """Runs the pipeline from the final clock until every run due by then has ended (or a pause holds it) and
        no dead letter is owed: every due run handed out, started, ended. Each pass moves the clock past the leases
        given out (the rescuer takes what a dead processor held; a run held by queue_one or a cap is looked at
        again a second later); runs falling due after the final clock are handed out too, and not looked at."""
        self.zombies.clear()  # a dead processor's attempt: the rescuer takes it once its lease ends
        final = self.now
        for _ in range(50):
            self.run(materialize(self.pool, self.settings, self.now))
            self._claim(1000)
            self._finish_all()
            while self.messages:
                m = self.messages.pop()
                worker = self._worker()
                request = store_runs.StartRequest(m.run_id, m.attempt, LEASE_S, m.scheduled_time)

                async def start(w: str = worker, q: store_runs.StartRequest = request) -> store_runs.Start:
                    async with self.pool.acquire() as conn:
                        return (await store_runs.start_runs(conn, w, [q]))[0]

                if self.run(start()) is store_runs.Start.WON:
                    self.holders[m.run_id] = Holder(worker, m)
            self._finish_all()
            self.owed_letters.clear()
            self.advance_quietly(LEASE_S + 1)
            self.rescue()
            left = self.fetch(
                "SELECT count(*) AS n FROM task_schedule WHERE (scheduled_time <= $1 "
                "AND status::text <> ALL($2::text[]) AND lease_until IS DISTINCT FROM 'infinity') "
                "OR (status = 'dead' AND lease_until IS NOT NULL)",
                final,
                list(ENDED),
            )
            if not left[0]["n"] and not self.messages:
                return final
        self.violations.append("the pipeline did not come to rest in 50 passes")
        return final

    def _finish_all(self) -> None:
        done = [outcome_of(h.message, RunState.SUCCEEDED, self.now) for h in self.holders.values()]

        async def go() -> None:
            async with self.pool.acquire() as conn:
                await store_runs.finish_runs(conn, done)

        if done:
            self.run(go())
        self.holders.clear()

    def advance_quietly(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.run(clock.set_time(self.pool, self.now))

    def _account(self, horizon: datetime) -> None:
        rows = self.fetch(
            "SELECT id, task_id, scheduled_time, status::text AS status, error, lease_until IS NOT NULL AS leased, "
            "lease_until = 'infinity' AS held FROM task_schedule ORDER BY id"
        )
        by_task: dict[int, list[asyncpg.Record]] = {}
        for r in rows:
            by_task.setdefault(r["task_id"], []).append(r)
        for task in self.tasks.values():
            have = by_task.get(task.id, [])
            times = [r["scheduled_time"] for r in have]
            owed = sorted({t for p in task.periods for t in p.owed(horizon)})
            missing = sorted(set(owed) - set(times))
            if missing:
                self.violations.append(
                    f"task {task.id}: {len(missing)} occurrences owed and never recorded, first {missing[0]} "
                    f"(periods {[(p.start, p.end) for p in task.periods]})"
                )
            if task.periods and have:
                last = max(times) + timedelta(seconds=1)
                expected = {t for p in task.periods for t in p.owed(last)}
                in_period = [
                    r for r in have if any(p.start < r["scheduled_time"] < (p.end or last) for p in task.periods)
                ]
                # A future run an operator cancelled stays, as a record of the cancel, when an edit then drops the
                # rest of the definition it belonged to.
                extra = [
                    (r["id"], r["scheduled_time"])
                    for r in in_period
                    if r["scheduled_time"] not in expected
                    and not (r["status"] == "cancelled" and r["error"] == "cancelled")
                ]
                if extra:
                    self.violations.append(
                        f"task {task.id}: runs {extra} at no occurrence of its definitions "
                        f"{[(p.start, p.end) for p in task.periods]}"
                    )
            for r in have:
                if r["scheduled_time"] > horizon or r["status"] in ENDED:
                    continue
                if not (r["held"] and not task.active):
                    self.violations.append(f"run {r['id']} of task {task.id} is still {r['status']} at rest")
        # One legal path of transitions per run, to one terminal state at most once (tests/faults/invariants.py).
        runs = self.fetch("SELECT id, status::text AS status, attempt FROM task_schedule ORDER BY id")
        self.violations += self.run(invariants.paths(self.pool, runs, {"scheduled"}, dropped=True))
        # A workflow run ends once, when its last step ends, as its steps say.
        for w in self.fetch(
            """
            SELECT w.id, w.status, w.open, array_agg(s.status::text ORDER BY s.id) AS steps
            FROM workflow_runs w JOIN task_schedule s ON s.workflow_run_id = w.id
            GROUP BY w.id
            """
        ):
            ended = all(step in ENDED for step in w["steps"])
            if w["status"] == "running" or not ended:
                self.violations.append(f"workflow run {w['id']} is {w['status']} at rest, its steps {w['steps']}")
            elif w["status"] == "succeeded" and set(w["steps"]) != {"succeeded"}:
                self.violations.append(f"workflow run {w['id']} succeeded, its steps {w['steps']}")
        for r in rows:
            if r["status"] == "dead" and r["leased"]:
                self.violations.append(f"dead run {r['id']}: its dead letter is still owed at rest")


def choose(items: list[T], pick: int) -> T:
    """The item a rule's `pick` names (an integer, so a shrunk sequence reads as plain calls: see
    tests/model/test_regressions.py)."""
    return items[pick % len(items)]


def outcome_of(m: Message, status: RunState, at: datetime) -> store_runs.Outcome:
    """A processor's record of the attempt of `m`, ended at `at`."""
    retry_lease = 5.0 if status in (RunState.RETRYING, RunState.DEAD) else 0.0
    return store_runs.Outcome(
        m.run_id,
        m.attempt,
        status,
        json.dumps({"ok": True}) if status is RunState.SUCCEEDED else None,
        None if status is RunState.SUCCEEDED else "model",
        at,
        1.0,
        m.scheduled_time,
        retry_lease,
        "noop",
    )
