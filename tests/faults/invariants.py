"""The promise each fault scenario must keep, checked against the database, the broker and the side effects.

- The runs in the database are the expected set: none missing, none extra, no two at one (task, time).
- Each run is in exactly one terminal state (or in one the scenario expects it to wait in), reached by one path
  of legal transitions from its insert, as `run_audit` recorded it; a succeeded run has its result recorded.
- Every succeeded http run reached the target, under its own run id as idempotency key, and every call the target
  saw carried the run id of an http run; every succeeded command run started its command.
- A side effect that happened more than once (the same key answered twice, a command started twice) is a repeat:
  allowed only for the runs a scenario names (at least once permits it after a crash past the side effect), and
  always listed in the report, never hidden.
- The dead-letter queue holds one message per dead run, plus the poison messages the scenario sent; the work
  queue holds nothing once the processors stopped (none held a delivery it could not settle).
- No process of the scenario's commands outlived the processor that started it (the caller passes what it found).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from taskmill.states import RunState
from tests.faults.target import MARK, CommandLog, Target

TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.DEAD, RunState.CANCELLED, RunState.SKIPPED})

# Per task: how many runs, or exactly which scheduled times.
Expected = Mapping[int, int | Collection[datetime]]


@dataclass
class Report:
    runs: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    poison: int = 0
    http_effects: int = 0
    command_starts: int = 0
    repeats: dict[int, int] = field(default_factory=dict)  # run id -> times its side effect happened
    violations: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items())) or "none"
        verdict = "all hold" if not self.violations else f"{len(self.violations)} VIOLATED"
        return (
            f"invariants: {verdict}; {self.runs} runs ({statuses}); dead letters {self.dead_letters} "
            f"(= {self.statuses.get('dead', 0)} dead + {self.poison} poison); side effects: {self.http_effects} "
            f"http, {self.command_starts} command starts; repeats {self.repeats or 'none'}"
            + "".join(f"\n  - {v}" for v in self.violations)
        )


async def check(
    db: asyncpg.Connection,
    expected: Expected,
    *,
    dead_letters: int,
    left_in_work_queue: int = 0,
    poison: int = 0,
    target: Target | None = None,
    commands: CommandLog | None = None,
    repeats_allowed: Collection[int] = (),
    waiting: Collection[str] = (),
    orphans: Collection[str] = (),
) -> Report:
    """Every invariant of the module docstring; the report lists each violation with the runs it concerns."""
    runs = await db.fetch(
        "SELECT s.id, s.task_id, s.scheduled_time, s.status::text AS status, s.attempt, t.type, t.payload "
        "FROM task_schedule s JOIN tasks t ON t.id = s.task_id ORDER BY s.id"
    )
    report = Report(runs=len(runs), statuses=Counter(r["status"] for r in runs), dead_letters=dead_letters)
    report.poison = poison
    v = report.violations
    v += _expected_set(runs, expected)
    for dup in await db.fetch(
        "SELECT task_id, scheduled_time, array_agg(id ORDER BY id) AS ids FROM task_schedule "
        "GROUP BY 1, 2 HAVING count(*) > 1"
    ):
        v.append(f"task {dup['task_id']} has runs {list(dup['ids'])} at the same time {dup['scheduled_time']}")
    v += await paths(db, runs, set(waiting))
    dead = report.statuses.get(RunState.DEAD, 0)
    if dead_letters != dead + poison:
        dead_ids = [r["id"] for r in runs if r["status"] == RunState.DEAD]
        v.append(f"dead-letter queue holds {dead_letters}, expected {dead} dead runs {dead_ids} + {poison} poison")
    if left_in_work_queue:
        v.append(f"{left_in_work_queue} messages in the work queue after the processors stopped (held unsettled)")
    effects: Counter[int] = Counter()
    if target is not None:
        report.http_effects, http_effects, problems = _http(runs, target)
        effects.update(http_effects)
        v += problems
    if commands is not None:
        starts, problems = _commands(runs, commands)
        report.command_starts = sum(starts.values())
        effects.update(starts)
        v += problems
    report.repeats = {run: n for run, n in sorted(effects.items()) if n > 1}
    for run, n in report.repeats.items():
        if run not in repeats_allowed:
            v.append(f"run {run}: its side effect happened {n} times, and no crash after the side effect allows it")
    v += [f"orphan process: {o}" for o in orphans]
    return report


def _expected_set(runs: list[asyncpg.Record], expected: Expected) -> list[str]:
    found: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for r in runs:
        found[r["task_id"]].append(r)
    problems = []
    for task_id, want in expected.items():
        have = found.pop(task_id, [])
        if isinstance(want, int):
            if len(have) != want:
                problems.append(f"task {task_id}: {len(have)} runs {[r['id'] for r in have]}, expected {want}")
            continue
        times = {r["scheduled_time"] for r in have}
        missing, extra = set(want) - times, times - set(want)
        if missing:
            problems.append(f"task {task_id}: {len(missing)} runs missing, first at {min(missing)}")
        if extra:
            ids = [r["id"] for r in have if r["scheduled_time"] in extra]
            problems.append(f"task {task_id}: {len(extra)} runs not expected: {ids[:20]}")
    for task_id, have in found.items():
        problems.append(f"task {task_id} was not expected to run, yet has runs {[r['id'] for r in have]}")
    return problems


async def paths(
    db: asyncpg.Connection | asyncpg.Pool, runs: list[asyncpg.Record], waiting: set[str], *, dropped: bool = False
) -> list[str]:
    """One legal path per run, from its insert to its (terminal) status; the result of each succeeded run kept.
    `dropped`: runs may have been deleted while scheduled (an edit or a pause drops future runs), their audit kept."""
    legal = {(t[0], t[1]) for t in await db.fetch("SELECT from_status::text, to_status::text FROM run_transitions")}
    moves: dict[int, list[tuple[str | None, str]]] = defaultdict(list)
    for a in await db.fetch("SELECT run_id, from_status::text, to_status::text FROM run_audit ORDER BY run_id, at"):
        moves[a["run_id"]].append((a["from_status"], a["to_status"]))
    kept = {
        (r["run_id"], r["attempt"])
        for r in await db.fetch("SELECT run_id, attempt FROM task_results WHERE status = 'succeeded'")
    }
    problems = []
    for r in runs:
        run, status, path = r["id"], r["status"], moves.pop(r["id"], [])
        shown = " -> ".join([str(path[0][0])] + [to for _, to in path]) if path else "no audit rows"
        if status not in TERMINAL and status not in waiting:
            problems.append(f"run {run} is still {status} ({shown})")
        if not path or path[0][0] is not None:
            problems.append(f"run {run}: its audit does not start with the insert ({shown})")
            continue
        for (_, prev_to), (frm, _) in itertools.pairwise(path):
            if frm != prev_to:
                problems.append(f"run {run}: audit jumps from {prev_to} to a move out of {frm} ({shown})")
        illegal = [(frm, to) for frm, to in path[1:] if (frm, to) not in legal]
        if illegal:
            problems.append(f"run {run}: illegal transitions {illegal} ({shown})")
        if path[-1][1] != status:
            problems.append(f"run {run}: is {status} but its audit ends in {path[-1][1]} ({shown})")
        # An operator's retry (POST /runs/{id}/retry: failed or dead -> scheduled) gives a run one more end.
        retried = sum(1 for frm, to in path if frm in (RunState.FAILED, RunState.DEAD) and to == RunState.SCHEDULED)
        if sum(1 for _, to in path if to in TERMINAL) > 1 + retried:
            problems.append(f"run {run}: reached a terminal state more than once ({shown})")
        if status == RunState.SUCCEEDED and (run, r["attempt"]) not in kept:
            problems.append(f"run {run}: succeeded on attempt {r['attempt']} without a succeeded result for it")
    problems += [
        f"audit rows for run {run}, which does not exist: {path}"
        for run, path in moves.items()
        if not (dropped and path[-1][1] == RunState.SCHEDULED)
    ]
    return problems


def _payload(r: asyncpg.Record) -> dict[str, Any]:
    payload: dict[str, Any] = r["payload"]
    return payload


def _http(runs: list[asyncpg.Record], target: Target) -> tuple[int, Counter[int], list[str]]:
    http_runs = {str(r["id"]): r for r in runs if r["type"] == "http"}
    problems = []
    for call in target.calls:
        if call.key not in http_runs:
            problems.append(f"a call to /{call.path} with idempotency key {call.key!r}, which is no http run's id")
    effects = target.effects()
    for key, r in http_runs.items():
        if r["status"] == RunState.SUCCEEDED and not effects.get(key):
            problems.append(f"http run {key} succeeded without a completed call to the target under its key")
    return sum(effects.values()), Counter({int(k): n for k, n in effects.items() if k in http_runs}), problems


def _commands(runs: list[asyncpg.Record], commands: CommandLog) -> tuple[Counter[int], list[str]]:
    mine = {
        r["id"]: r for r in runs if r["type"] == "command" and _payload(r).get("env", {}).get(MARK) == commands.mark
    }
    starts = commands.starts()
    problems = [
        f"the command log names run {run}, not a command run of this scenario" for run in starts if run not in mine
    ]
    for run, r in mine.items():
        if r["status"] == RunState.SUCCEEDED and not starts.get(run):
            problems.append(f"command run {run} succeeded without its command having started")
    return starts, problems
