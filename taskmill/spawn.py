"""Subtasks: a running run spawns children, which may spawn their own, to TASKMILL_SPAWN_MAX_DEPTH.

A child is a run of its own (with a task row named `spawn:<parent run>:<key>`), linked to its parent. Its key is
given or numbered in spawn order: a parent that runs again (a retry, a lost processor) spawns the same keys, which
are no-ops the second time, so a deterministic parent never makes a child twice. A child may depend on siblings
(`depends_on`: their runs or keys): it waits blocked until they succeed, and reads their results (a reduce).

A parent that asks to wait ends in `waiting` when its own work is done, then `succeeded` when every child has, or
`failed` with the first child's error; the database settles it (run_flow, migration 0013) as the last child ends.

Where spawns come from:
- a Python handler: `await ctx.spawn("type", payload)`, in the handler's own transaction (its children exist only if
  it commits), and `ctx.wait_for_children()`;
- an http task whose response is JSON with `{"taskmill": {"spawn": [spec, ...], "wait": true}}`;
- a command task that writes specs, one JSON object a line, to the file `$TASKMILL_SPAWN_FILE` (and a line
  `{"wait": true}` to wait).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskmill.db import Connection, jsonb
from taskmill.models import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_CAP_S, TaskBody
from taskmill.store.tasktypes import registry_for
from taskmill.tasktypes import COMMAND_TYPE
from taskmill.tracing import traceparent
from taskmill.typecheck import default_timeout, type_problems

KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
# Bytes of a spawn file read at most: what a command may ask for in one run.
SPAWN_FILE_MAX_BYTES = 4 * 1024 * 1024


class SpawnError(Exception):
    """A spawn the parent cannot make (a bad spec, past a limit): the parent's attempt fails with it."""


class SpawnSpec(BaseModel):
    """One child: what it runs and how it is retried, its key, and the siblings it depends on."""

    model_config = ConfigDict(extra="forbid")
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    key: str | None = Field(None, pattern=KEY_PATTERN)
    # Sibling runs (their ids) or keys, spawned by the same parent before this one.
    depends_on: list[int | str] = Field(default_factory=list, max_length=100_000)
    max_retries: int = Field(0, ge=0, le=100)
    retry_delay_seconds: float = Field(10.0, ge=0, le=86400)
    backoff: float = Field(1.0, ge=1, le=10)
    timeout_seconds: float | None = Field(None, gt=0, le=MAX_TIMEOUT_CAP_S)
    estimated_ms: int = Field(1000, ge=0, le=86_400_000)
    priority: int | None = Field(None, ge=0, le=9)  # None: the parent's


@dataclass(frozen=True, slots=True)
class Child:
    run_id: int
    key: str


@dataclass(frozen=True, slots=True)
class Parent:
    """The run that spawns, and the limits its processor holds it to."""

    run_id: int
    task_id: int
    scheduled_time: datetime
    max_depth: int
    max_children: int
    max_timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(slots=True)
class Flow:
    """One attempt's spawning: numbering its unnamed children, the spawns an http answer or a spawn file asked
    for (created when the run's own work is done), and whether it waits for its children."""

    parent: Parent
    wait: bool = False
    asked: int = 0  # children asked for so far in this attempt: numbers the next unnamed one
    pending: list[SpawnSpec] = field(default_factory=list)

    async def spawn(self, conn: Connection, specs: Sequence[SpawnSpec]) -> list[Child]:
        first = self.asked + 1
        self.asked += len(specs)
        return await spawn(conn, self.parent, specs, first_number=first)

    async def spawn_pending(self, pool: asyncpg.Pool) -> None:
        specs, self.pending = self.pending, []
        async with pool.acquire() as conn, conn.transaction():
            await self.spawn(conn, specs)


def child_name(parent_run_id: int, key: str) -> str:
    return f"spawn:{parent_run_id}:{key}"


def parse_specs(items: Sequence[Any], where: str) -> tuple[list[SpawnSpec], bool]:
    """Specs from JSON values (an http answer's list, a spawn file's lines): the specs and whether to wait.
    `{"wait": true}` is the wait; anything else must be a spec. SpawnError names the item and the field."""
    specs: list[SpawnSpec] = []
    wait = False
    for i, item in enumerate(items, 1):
        if isinstance(item, dict) and item.keys() == {"wait"}:
            wait = wait or item["wait"] is True
            continue
        specs.append(spec_of(item, f"{where} {i}"))
    return specs, wait


def spec_of(item: Any, where: str) -> SpawnSpec:
    """One spec from its JSON fields; SpawnError naming `where` and the field."""
    try:
        return SpawnSpec.model_validate(item)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(map(str, e["loc"])) or "(item)"
        raise SpawnError(f"{where}: {field}: {e['msg']}") from None


def read_spawn_file(text: str) -> tuple[list[SpawnSpec], bool]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as exc:
            raise SpawnError(f"TASKMILL_SPAWN_FILE line {n}: not JSON ({exc})") from None
    return parse_specs(items, "TASKMILL_SPAWN_FILE item")


def from_http_answer(body: Any) -> tuple[list[SpawnSpec], bool]:
    """The spawns an http task's JSON answer asks for (`{"taskmill": {"spawn": [...], "wait": true}}`)."""
    if not isinstance(body, dict) or not isinstance(ask := body.get("taskmill"), dict):
        return [], False
    items = ask.get("spawn", [])
    if not isinstance(items, list):
        raise SpawnError("taskmill.spawn in the response: a list of specs")
    specs, _ = parse_specs(items, "taskmill.spawn item")
    # What a server answers must not become a command on our processors: only a task created with the
    # tasks:command scope runs one.
    for i, spec in enumerate(specs, 1):
        if spec.type == COMMAND_TYPE:
            raise SpawnError(f"taskmill.spawn item {i}: type: an http answer cannot spawn a command run")
    return specs, ask.get("wait") is True


PARENT_TASK = "SELECT spawn_depth, priority FROM tasks WHERE id = $1"

INSERT_CHILDREN = """
INSERT INTO tasks (name, type, payload, schedule_kind, max_retries, retry_delay_seconds, backoff, timeout_seconds,
                   estimated_ms, parent_run_id, spawn_depth, created_by, priority, origin)
SELECT n, ty, p::jsonb, 'immediate', mr, rd, b, t, est, $9, $10, $11, pr, 'spawn'
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::float8[], $6::float8[], $7::float8[], $8::int[],
            $12::smallint[])
    AS b(n, ty, p, mr, rd, b, t, est, pr)
ON CONFLICT (name) WHERE workflow_id IS NULL DO NOTHING
RETURNING id, name
"""

# Existing children by name (a parent spawning again, or a key a later spec depends on). From the parent's runs
# (task_schedule_parent), not from the names: by task_id every day's partition would be joined whole (300 ms with
# 2 M runs, the tasks table's statistics still blind to children just inserted; 17 ms this way).
CHILDREN_NAMED = """
SELECT t.name, s.id AS run_id FROM task_schedule s JOIN tasks t ON t.id = s.task_id
WHERE s.parent_id = $2 AND t.name = ANY($1::text[])
"""

# Upstream runs, locked against ending until this transaction commits: each is then either ended now (and counted
# as such) or ends later and finds its edge.
LOCK_UPSTREAM = """
SELECT id, scheduled_time, status::text, parent_id FROM task_schedule WHERE id = ANY($1::bigint[]) ORDER BY id
FOR SHARE
"""

INSERT_RUNS = """
INSERT INTO task_schedule (task_id, scheduled_time, status, blockers, parent_id, created_by, traceparent)
SELECT task_id, now(), CASE WHEN blockers > 0 THEN 'blocked' ELSE 'scheduled' END::run_status, blockers, $3, $4, $5
FROM unnest($1::bigint[], $2::int[]) AS b(task_id, blockers)
RETURNING id, task_id, scheduled_time
"""

INSERT_LINKS = """
INSERT INTO run_links (upstream_id, dependent_id, dependent_time)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[])
ON CONFLICT DO NOTHING
"""

# Counted under the row's lock, which a cancel of the parent takes too (run_flow in taskmill/schema.sql): a parent
# cancelled before this comes back `cancelled`, and spawns nothing; one cancelled after finds these children.
COUNT_CHILDREN = """
INSERT INTO run_children (parent_id, parent_time, spawned, open) VALUES ($1, $2, $3, $3)
ON CONFLICT (parent_id) DO UPDATE SET spawned = run_children.spawned + $3, open = run_children.open + $3
RETURNING spawned, cancelled
"""

SKIP = """
UPDATE task_schedule SET status = 'skipped', error = b.reason, finished_at = now()
FROM unnest($1::bigint[], $2::text[]) AS b(id, reason)
WHERE task_schedule.id = b.id AND task_schedule.status = 'blocked'
"""

_ENDED = {"succeeded", "failed", "dead", "cancelled", "skipped"}


async def _checked_bodies(
    conn: Connection, parent: Parent, specs: Sequence[SpawnSpec], keys: list[str], priority: int
) -> list[TaskBody]:
    """Each child as a task body, its type known and its payload fitting it (SpawnError naming the spec)."""
    registry = await registry_for(conn, {s.type for s in specs})
    bodies = []
    for i, (spec, key) in enumerate(zip(specs, keys, strict=True)):
        try:
            body = TaskBody(
                name=child_name(parent.run_id, key),
                type=spec.type,
                payload=spec.payload,
                max_retries=spec.max_retries,
                retry_delay_seconds=spec.retry_delay_seconds,
                backoff=spec.backoff,
                timeout_seconds=spec.timeout_seconds or DEFAULT_TIMEOUT_S,
                estimated_ms=spec.estimated_ms,
                priority=priority if spec.priority is None else spec.priority,
            )
        except ValidationError as exc:
            e = exc.errors()[0]
            raise SpawnError(f"spawn {i + 1} ({key}): {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
        if problems := type_problems(body, registry):
            p = problems[0]
            raise SpawnError(f"spawn {i + 1} ({key}): {'.'.join(map(str, p['loc'][1:]))}: {p['msg']}")
        if spec.timeout_seconds is None:
            timeout = default_timeout(body, registry) or DEFAULT_TIMEOUT_S
            body = body.model_copy(update={"timeout_seconds": min(timeout, parent.max_timeout_s)})
        bodies.append(body)
    return bodies


async def spawn(
    conn: Connection,
    parent: Parent,
    specs: Sequence[SpawnSpec],
    *,
    first_number: int = 1,
    created_by: str | None = None,
) -> list[Child]:
    """Creates the children of `parent` that do not exist yet (inside the caller's transaction); returns every
    spec's child, in order. Unnamed specs are keyed by their number in the parent's spawn order, from
    `first_number`."""
    if not specs:
        return []
    task = await conn.fetchrow(PARENT_TASK, parent.task_id)
    if task is None:
        raise SpawnError(f"spawn: run {parent.run_id}'s task is gone")
    depth = task["spawn_depth"]
    if depth + 1 > parent.max_depth:
        raise SpawnError(
            f"spawn: a child here would be {depth + 1} levels deep, past TASKMILL_SPAWN_MAX_DEPTH ({parent.max_depth})"
        )
    keys = [spec.key or str(first_number + i) for i, spec in enumerate(specs)]
    if len(set(keys)) != len(keys):
        raise SpawnError("spawn: two children with the same key")
    bodies = await _checked_bodies(conn, parent, specs, keys, task["priority"])
    async with conn.transaction():
        created = await conn.fetch(
            INSERT_CHILDREN,
            [b.name for b in bodies],
            [b.type for b in bodies],
            [jsonb(b.payload) for b in bodies],
            [b.max_retries for b in bodies],
            [b.retry_delay_seconds for b in bodies],
            [b.backoff for b in bodies],
            [b.timeout_seconds for b in bodies],
            [b.estimated_ms for b in bodies],
            parent.run_id,
            depth + 1,
            created_by,
            [b.priority for b in bodies],
        )
        new_tasks = {r["name"]: r["id"] for r in created}
        # The runs of the keys that exist already: repeats, and siblings that specs depend on by key.
        wanted = {str(d) for s in specs for d in s.depends_on if isinstance(d, str)} | set(keys)
        names = {child_name(parent.run_id, k): k for k in wanted}
        rows = await conn.fetch(CHILDREN_NAMED, list(names), parent.run_id)
        runs_by_key = {names[r["name"]]: r["run_id"] for r in rows}
        waiting = [i for i, b in enumerate(bodies) if b.name in new_tasks]
        if waiting:
            counted = await conn.fetchrow(COUNT_CHILDREN, parent.run_id, parent.scheduled_time, len(waiting))
            assert counted is not None
            if counted["cancelled"]:
                raise SpawnError(f"spawn: run {parent.run_id} was cancelled")
            spawned = counted["spawned"]
            if spawned > parent.max_children:
                raise SpawnError(
                    f"spawn: run {parent.run_id} would have {spawned} children, past TASKMILL_SPAWN_MAX_CHILDREN "
                    f"({parent.max_children})"
                )
        # In waves: a spec that depends on a sibling of this same call is created once that sibling's run exists.
        while waiting:
            wave = [i for i in waiting if all(isinstance(d, int) or d in runs_by_key for d in specs[i].depends_on)]
            if not wave:
                i = waiting[0]
                missing = next(d for d in specs[i].depends_on if not isinstance(d, int) and d not in runs_by_key)
                raise SpawnError(f"spawn {i + 1} ({keys[i]}): depends_on {missing!r}: no child with that key")
            await _create_runs(conn, parent, wave, specs, keys, [new_tasks[bodies[i].name] for i in wave],
                               runs_by_key, created_by)  # fmt: skip
            waiting = [i for i in waiting if i not in wave]
    if taken := [k for k in keys if k not in runs_by_key]:
        raise SpawnError(f"spawn: the name {child_name(parent.run_id, taken[0])!r} is a task's of its own")
    return [Child(runs_by_key[k], k) for k in keys]


async def _create_runs(
    conn: Connection,
    parent: Parent,
    wave: list[int],
    specs: Sequence[SpawnSpec],
    keys: list[str],
    task_ids: list[int],
    runs_by_key: dict[str, int],
    created_by: str | None,
) -> None:
    """The runs of the specs in `wave` (whose upstream runs all exist), blocked on those not ended, skipped if one
    ended without succeeding; their edges; and their keys' runs added to `runs_by_key`."""
    upstream = {i: sorted({d if isinstance(d, int) else runs_by_key[d] for d in specs[i].depends_on}) for i in wave}
    locked = {
        r["id"]: r for r in await conn.fetch(LOCK_UPSTREAM, sorted({u for ids in upstream.values() for u in ids}))
    }
    blockers: list[int] = []
    skip: dict[int, str] = {}
    for i in wave:
        for u in upstream[i]:
            if (row := locked.get(u)) is None or row["parent_id"] != parent.run_id:
                raise SpawnError(f"spawn {i + 1} ({keys[i]}): depends_on {u}: not a child of this run")
        failed = [u for u in upstream[i] if locked[u]["status"] in _ENDED - {"succeeded"}]
        if failed:
            skip[i] = f"dependency run {failed[0]} {locked[failed[0]]['status']}"
        blockers.append(sum(locked[u]["status"] not in _ENDED for u in upstream[i]) + len(failed[:1]))
    # Children join the trace of the parent's execution (taskmill/tracing.py).
    rows = await conn.fetch(INSERT_RUNS, task_ids, blockers, parent.run_id, created_by, traceparent())
    run_of_task = {r["task_id"]: r for r in rows}
    ups: list[int] = []
    downs: list[int] = []
    times: list[datetime] = []
    skipped: list[int] = []
    for i, task_id in zip(wave, task_ids, strict=True):
        row = run_of_task[task_id]
        runs_by_key[keys[i]] = row["id"]
        ups += upstream[i]
        downs += [row["id"]] * len(upstream[i])
        times += [row["scheduled_time"]] * len(upstream[i])
        if i in skip:
            skipped.append(row["id"])
    if ups:
        await conn.execute(INSERT_LINKS, ups, downs, times)
    if skipped:
        # As the database would have, had the dependency ended after: the parent's count goes down with it.
        await conn.execute(SKIP, skipped, [skip[i] for i in wave if runs_by_key[keys[i]] in skipped])


INPUTS = """
SELECT s.id AS run_id, t.name, s.status::text, r.result
FROM run_links l
JOIN task_schedule s ON s.id = l.upstream_id
JOIN tasks t ON t.id = s.task_id
LEFT JOIN LATERAL (
    SELECT result FROM task_results r WHERE r.run_id = s.id AND r.scheduled_time = s.scheduled_time
    ORDER BY r.attempt DESC LIMIT 1
) r ON true
WHERE l.dependent_id = $1
ORDER BY s.id
"""


@dataclass(frozen=True, slots=True)
class Input:
    """A run this one depends on, as it ended: a workflow step's dependency or a reduce's mapped child."""

    run_id: int
    name: str  # the step's name, or the child's key
    status: str
    result: Any  # as stored: for a Python handler, {"result": <what it returned>, "output": ...}

    @property
    def value(self) -> Any:
        """What a Python handler returned (its stored result's `result`); the whole result for other types."""
        if isinstance(self.result, dict) and "result" in self.result:
            return self.result["result"]
        return self.result


async def inputs(conn: Connection, run_id: int) -> list[Input]:
    """The results of the runs `run_id` depends on, read from the results table when asked for."""
    out = []
    for r in await conn.fetch(INPUTS, run_id):
        name = r["name"].rsplit(":", 1)[-1] if r["name"].startswith("spawn:") else r["name"]
        out.append(Input(r["run_id"], name, r["status"], r["result"]))
    return out
