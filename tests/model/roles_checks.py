"""What the roles model (tests/model/roles_machine.py) knows of one example's tasks, and the invariants it checks.

Each check returns the violations it found, as sentences naming the runs; an empty list means it holds. The per-step
checks are cheap queries run after every rule; the final ones run at the end of an example, once nothing moves.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from tests.faults import invariants
from tests.faults.target import Call, CommandLog, Target

IN_FLIGHT = ["queued", "running", "retrying"]
# An interval occurrence this close to a definition's end may fall on either side of it (the end is the statement's
# now(), the occurrences are computed from the same clock, but nothing says which side wins a tie).
TIE = timedelta(milliseconds=5)
# A claim that locked a run before an edit, a pause or a delete reached it hands it out, and the change, waiting for
# the row, leaves it to run; the claim's audit time (clock_timestamp) can then be after the change's now(), its
# transaction's start. Seen: 1 ms after a delete, under a loaded suite.
CLAIM_SLACK = timedelta(seconds=1)


@dataclass
class Period:
    """One interval definition in force from `start` (the task's schedule_from) until `end` (the schedule_from of
    the edit, pause or resume that ended it, or the deletion's deleted_at)."""

    every: int
    start: datetime
    end: datetime | None = None
    ended_by: str = ""


@dataclass
class Window:
    """From `start` to `end` the task is paused (or deleted): nothing of it may be handed out that was not handed
    out before `start` (a pause skips what fell due and was not handed out: taskmill/store/tasks.py set_active)."""

    why: str
    start: datetime
    end: datetime | None = None


@dataclass
class TaskModel:
    id: int
    name: str
    type: str
    kind: str
    active: bool
    schedule_from: datetime
    caps: set[int | None] = field(default_factory=set)  # every max_concurrency it had
    overlaps: set[str] = field(default_factory=set)  # every overlap policy it had
    periods: list[Period] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    # When a one-off definition (once, immediate) may have made its run: [lo, hi] per definition.
    one_offs: list[tuple[datetime, datetime]] = field(default_factory=list)
    deleted_at: datetime | None = None

    @property
    def live(self) -> bool:
        return self.deleted_at is None


@dataclass
class ExampleModel:
    tag: str  # every task, workflow and target path of the example starts with it
    tasks: dict[int, TaskModel] = field(default_factory=dict)
    workflow: str | None = None
    step_ids: list[int] = field(default_factory=list)  # the workflow's steps (tasks of their own)

    def live(self) -> list[TaskModel]:
        return [t for t in self.tasks.values() if t.live]

    def task_ids(self) -> list[int]:
        return [*self.tasks, *self.step_ids]


# -- after every step ------------------------------------------------------------------------------------------


async def caps_in_flight(db: asyncpg.Connection, ex: ExampleModel) -> list[str]:
    """Per concurrency key, the runs in flight are at most the largest cap any task counting under it ever had (an
    edit that lowers a cap leaves the runs in flight as they are; tasks sharing a key are each held to their own)."""
    rows = await db.fetch(
        "SELECT concurrency_key AS key, array_agg(id ORDER BY id) AS runs, array_agg(DISTINCT task_id) AS tasks "
        "FROM task_schedule WHERE task_id = ANY($1::bigint[]) AND status = ANY($2::run_status[]) "
        "AND concurrency_key IS NOT NULL GROUP BY 1",
        ex.task_ids(),
        IN_FLIGHT,
    )
    problems = []
    for r in rows:
        caps = [c for t in r["tasks"] for c in ex.tasks[t].caps if c is not None]
        cap = max(caps, default=0)
        if len(r["runs"]) > cap:
            problems.append(f"key {r['key']}: {len(r['runs'])} runs in flight {list(r['runs'])}, over its cap {cap}")
    return problems


async def overlap_in_flight(db: asyncpg.Connection, ex: ExampleModel) -> list[str]:
    """A task whose overlap policy was never `allow` has at most one of its occurrences in flight (an operator's
    retry, `backfill`, is not an occurrence: no policy holds it)."""
    strict = [t.id for t in ex.tasks.values() if t.overlaps and "allow" not in t.overlaps]
    if not strict:
        return []
    rows = await db.fetch(
        "SELECT task_id, array_agg(id ORDER BY id) AS runs FROM task_schedule "
        "WHERE task_id = ANY($1::bigint[]) AND status = ANY($2::run_status[]) AND NOT backfill "
        "GROUP BY 1 HAVING count(*) > 1",
        strict,
        IN_FLIGHT,
    )
    return [
        f"task {r['task_id']} ({sorted(ex.tasks[r['task_id']].overlaps)}): occurrences {list(r['runs'])} in flight"
        for r in rows
    ]


async def held_start_nothing(db: asyncpg.Connection, ex: ExampleModel) -> list[str]:
    """No run of a paused or deleted task is handed out (an audit move into `queued`) within its window, unless it
    had been handed out before the window began (it came back from a failed publish or a lost processor)."""
    held = {t.id: t for t in ex.tasks.values() if t.windows}
    if not held:
        return []
    rows = await db.fetch(
        "SELECT a.run_id, a.task_id, a.at, s.scheduled_time, "
        "       (SELECT min(b.at) FROM run_audit b WHERE b.run_id = a.run_id AND b.to_status = 'queued') AS first "
        "FROM run_audit a JOIN task_schedule s ON s.id = a.run_id "
        "WHERE a.run_id IN (SELECT id FROM task_schedule WHERE task_id = ANY($1::bigint[])) "
        "AND a.to_status = 'queued'",
        list(held),
    )
    problems = []
    for r in rows:
        for w in held[r["task_id"]].windows:
            if not (w.start < r["at"] and (w.end is None or r["at"] < w.end)):
                continue
            if r["first"] < w.start:
                continue
            problems.append(
                f"run {r['run_id']} of task {r['task_id']} (due {r['scheduled_time']:%T.%f}) was handed out at "
                f"{r['at']:%T.%f}, {(r['at'] - w.start).total_seconds():.3f} s into its {w.why} window"
            )
    return problems


async def scopes_kept(db: asyncpg.Connection, ex: ExampleModel, limited_sub: str) -> list[str]:
    """Nothing a token's scopes forbid happened: no command task made or edited into by a token without
    tasks:command (it is the only one with `limited_sub`), no task of the model's of another type than the model
    says, no command run made through the submit queue (its tasks are created by `submit`; anywhere in the database)."""
    problems = [
        f"task {r['id']} {r['name']!r} is a command task made by {limited_sub}, whose token lacks tasks:command"
        for r in await db.fetch("SELECT id, name FROM tasks WHERE created_by = $1 AND type = 'command'", limited_sub)
    ]
    types = {t.id: t.type for t in ex.tasks.values()}
    for r in await db.fetch("SELECT id, type FROM tasks WHERE id = ANY($1::bigint[])", list(types)):
        if r["type"] != types[r["id"]]:
            problems.append(f"task {r['id']} is of type {r['type']}, though only {types[r['id']]!r} was asked for")
    problems += [
        f"run {r['id']} of the command task {r['task_id']} was made through the submit queue"
        for r in await db.fetch(
            "SELECT s.id, s.task_id FROM task_schedule s JOIN tasks t ON t.id = s.task_id "
            "WHERE t.created_by = 'submit' AND t.type = 'command'"
        )
    ]
    return problems


def calls_at_once(spans: Iterable[Span], tag: str) -> list[str]:
    """Never two calls of one run (its idempotency key) open at once."""
    open_by_key = Counter(s.call.key for s in spans if s.end is None and s.call.path.startswith(tag + "-"))
    return [f"run {key}: {n} calls to the target open at once" for key, n in open_by_key.items() if n > 1]


# -- at the end of an example ----------------------------------------------------------------------------------


async def stranded(db: asyncpg.Connection, ex: ExampleModel, slack_s: float) -> list[str]:
    """Nothing is left behind: no run in flight past its lease, no due run not handed out, by more than `slack_s`
    (the rescuer and the claim look every second or so). A run held by a pause (lease `infinity`) or a cap (a lease a
    second ahead, renewed) is not left behind."""
    rows = await db.fetch(
        "SELECT id, task_id, status::text, scheduled_time, lease_until FROM task_schedule "
        "WHERE task_id = ANY($1::bigint[]) AND ("
        "  status = ANY($2::run_status[]) AND lease_until < now() - make_interval(secs => $3)"
        "  OR status = 'scheduled' AND scheduled_time < now() - make_interval(secs => $3)"
        "     AND coalesce(lease_until, '-infinity') < now() - make_interval(secs => $3))",
        ex.task_ids(),
        IN_FLIGHT,
        slack_s,
    )
    return [
        f"run {r['id']} of task {r['task_id']} is stranded: {r['status']}, due {r['scheduled_time']:%T.%f}, lease "
        f"{r['lease_until']}"
        for r in rows
    ]


async def runs_of(db: asyncpg.Connection, ex: ExampleModel) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT s.id, s.task_id, s.scheduled_time, s.status::text AS status, s.attempt, s.lost, s.backfill, "
        "       t.type, t.payload, "
        "       (SELECT min(a.at) FROM run_audit a WHERE a.run_id = s.id AND a.to_status = 'queued') AS first_queued, "
        "       (SELECT min(a.at) FROM run_audit a WHERE a.run_id = s.id AND a.from_status = 'scheduled') AS decided "
        "FROM task_schedule s JOIN tasks t ON t.id = s.task_id WHERE s.task_id = ANY($1::bigint[]) ORDER BY s.id",
        ex.task_ids(),
    )


async def paths(db: asyncpg.Connection, ex: ExampleModel, runs: list[asyncpg.Record]) -> list[str]:
    """Every run terminal, by one legal audit path from its insert (tests/faults/invariants.py), reaching a terminal
    state once, or once more per operator's retry (failed or dead -> scheduled: POST /runs/{id}/retry); a run that is
    gone (an edit or a pause dropped it) was dropped while still scheduled, never after it was handed out."""
    mine = {r["id"] for r in runs}
    # paths() reads the whole audit: runs of other examples, and dropped runs, come back as "does not exist".
    problems = [p for p in await invariants.paths(db, runs, set()) if "audit rows for run " not in p]
    terminal = [s.value for s in invariants.TERMINAL]
    for r in await db.fetch(
        "SELECT run_id, array_agg(coalesce(from_status::text, '') ORDER BY at) AS froms, "
        "       array_agg(to_status::text ORDER BY at) AS tos FROM run_audit "
        "WHERE task_id = ANY($1::bigint[]) GROUP BY run_id",
        ex.task_ids(),
    ):
        moves = list(zip(r["froms"], r["tos"], strict=True))
        if r["run_id"] not in mine:
            if r["tos"][-1] != "scheduled":
                problems.append(f"run {r['run_id']} was dropped after it was handed out: {' -> '.join(r['tos'])}")
            continue
        ends = sum(1 for _, to in moves if to in terminal)
        retries = sum(1 for frm, to in moves if frm in ("failed", "dead") and to == "scheduled")
        if ends != retries + 1:
            problems.append(
                f"run {r['run_id']} reached a terminal state {ends} times, after {retries} retries: "
                + " -> ".join(r["tos"])
            )
    return problems


def effects(
    runs: list[asyncpg.Record], ran_as: dict[int, str], calls: list[Call], commands: CommandLog, tag: str
) -> list[str]:
    """Every call to the example's target paths is under an http run's id, every run that succeeded as http or as
    a command left its side effect, and a side effect happened more than once only for a run that lost a processor
    (at least once: it may die after the side effect, before recording it). `ran_as`: the type each succeeded run's
    last attempt ran as."""
    by_id = {r["id"]: r for r in runs}
    problems = []
    mine = [c for c in calls if c.path.startswith(tag + "-")]
    for c in mine:
        if c.key is None or not c.key.isdigit() or int(c.key) not in by_id:
            problems.append(f"a call to /{c.path} under key {c.key!r}, which is no run of the example")
    done = Counter(int(c.key) for c in mine if c.effective and c.key and c.key.isdigit())
    starts = Counter({run: n for run, n in commands.starts().items() if run in by_id})
    for run, type_ in ran_as.items():
        if type_ == "http" and not done[run]:
            problems.append(f"http run {run} succeeded without a completed call under its key")
        if type_ == "command" and not starts[run]:
            problems.append(f"command run {run} succeeded without its command having started")
    for run, n in (done + starts).items():
        if n > 1 and not by_id[run]["lost"]:
            problems.append(f"run {run}: its side effect happened {n} times, and it lost no processor")
    return problems


async def attempts_apart(db: asyncpg.Connection, runs: list[asyncpg.Record], spans: list[Span]) -> list[str]:
    """Never two attempts of one run at once: neither in the attempts the database recorded (task_results) nor
    in the calls the target saw under the run's key."""
    ids = [r["id"] for r in runs]
    problems = []
    rows = await db.fetch(
        "SELECT run_id, attempt, started_at, finished_at FROM task_results WHERE run_id = ANY($1::bigint[]) "
        "AND started_at IS NOT NULL ORDER BY run_id, started_at",
        ids,
    )
    for run, attempts in itertools.groupby(rows, key=lambda r: r["run_id"]):
        for a, b in itertools.pairwise(attempts):
            if b["started_at"] < a["finished_at"]:
                early = (a["finished_at"] - b["started_at"]).total_seconds()
                problems.append(f"run {run}: attempt {b['attempt']} began {early:.3f} s before {a['attempt']} ended")
    keys = {str(i) for i in ids}
    by_key: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        if s.call.key in keys:
            by_key[s.call.key].append(s)
    for key, calls in by_key.items():
        calls.sort(key=lambda s: s.start)
        for first, second in itertools.pairwise(calls):
            if first.end is None or second.start < first.end:
                problems.append(f"run {key}: two calls to the target overlapped ({first} and {second})")
    return problems


async def caps_over_time(
    db: asyncpg.Connection, ex: ExampleModel, runs: list[asyncpg.Record], spans: list[Span]
) -> list[str]:
    """At no instant more calls at the target under one concurrency key than the largest cap a task counting under
    it ever had. Calls of cancelled runs are left out: a cancelled run leaves its key's count at once, while its
    processor stops the call within TASKMILL_CANCEL_CHECK_S (README "Overlaps")."""
    rows = await db.fetch(
        "SELECT id, task_id, concurrency_key FROM task_schedule WHERE id = ANY($1::bigint[]) "
        "AND concurrency_key IS NOT NULL AND status <> 'cancelled'",
        [r["id"] for r in runs],
    )
    key_of = {str(r["id"]): (r["concurrency_key"], r["task_id"]) for r in rows}
    events: dict[str, list[tuple[float, int]]] = defaultdict(list)
    tasks: dict[str, set[int]] = defaultdict(set)
    for s in spans:
        if s.call.key in key_of and s.end is not None:
            key, task = key_of[s.call.key]
            events[key] += [(s.start, 1), (s.end, -1)]
            tasks[key].add(task)
    problems = []
    for key, moves in events.items():
        cap = max((c for t in tasks[key] for c in ex.tasks[t].caps if c is not None), default=0)
        level = peak = 0
        for _, step in sorted(moves):  # an end sorts before a start at the same instant
            level += step
            peak = max(peak, level)
        if peak > cap:
            problems.append(f"key {key}: {peak} calls at the target at once, over its cap {cap}")
    return problems


def accounting(task: TaskModel, runs: list[asyncpg.Record], lead: timedelta) -> list[str]:
    """Every occurrence of each interval definition, `start + k * every` for k >= 1 before its `end`, is a row exactly
    once (whatever became of it: ran, skipped with a reason, cancelled), and no row is none of these:
    - an occurrence of a definition,
    - a one-off definition's run (at its time),
    - an occurrence just after a definition's end, up to the dispatch lead, that the claim had decided on (handed
      out, or skipped) before that end (CLAIM_SLACK): an edit or a pause drops only runs still scheduled,
    - after the deletion, a run cancelled by it without having been handed out.
    An occurrence within TIE of a definition's end may be there or not."""
    at = {r["scheduled_time"]: r for r in runs}
    problems, owed = [], set()
    for p in task.periods:
        assert p.end is not None, f"task {task.id}: a definition still open at the end of the example"
        t = p.start + timedelta(seconds=p.every)
        while t < p.end - TIE:
            owed.add(t)
            if t not in at:
                problems.append(
                    f"task {task.id}: occurrence {t:%T.%f} of its every-{p.every}-s definition "
                    f"[{p.start:%T.%f}, {p.end:%T.%f}) (ended by {p.ended_by}) has no row"
                )
            t += timedelta(seconds=p.every)
    for when, r in at.items():
        if when in owed or any(lo <= when <= hi for lo, hi in task.one_offs):
            continue
        if any(
            p.end is not None
            and p.end - TIE <= when <= p.end + lead + TIE
            and r["decided"] is not None
            and r["decided"] <= p.end + CLAIM_SLACK
            for p in task.periods
        ):
            continue
        if (
            task.deleted_at is not None
            and when > task.deleted_at
            and r["status"] == "cancelled"
            and r["first_queued"] is None
        ):
            continue
        problems.append(f"task {task.id}: run {r['id']} at {when:%T.%f} ({r['status']}) is no occurrence it owed")
    if problems:
        shown = ", ".join(f"every {p.every} s [{p.start:%T.%f}, {p.end:%T.%f})" for p in task.periods if p.end)
        problems.append(f"task {task.id}: its definitions were {shown or 'none'}; one-offs {task.one_offs}")
    return problems


@dataclass(eq=False)
class Span:
    """A call the target served: when it came in and when the target was done with it (answered, or found its caller
    gone), on the test's monotonic clock."""

    call: Call
    start: float
    end: float | None = None

    def __str__(self) -> str:
        end = f"{self.end:.3f}" if self.end is not None else "open"
        return f"/{self.call.path} [{self.start:.3f}, {end}] {self.call.status}"


_serving: contextvars.ContextVar[Span | None] = contextvars.ContextVar("serving", default=None)


class TimedTarget(Target):
    """The harness's HTTP target (tests/faults/target.py), timing each call as well."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[Span] = []

    def _status(self, call: Call, modes: dict[str, str]) -> int:
        # Called as the call comes in, in the connection's own task: _serve reads the span back when it is done.
        span = Span(call, time.monotonic())
        self.spans.append(span)
        _serving.set(span)
        return super()._status(call, modes)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await super()._serve(reader, writer)
        finally:
            if (span := _serving.get()) is not None:
                span.end = time.monotonic()
