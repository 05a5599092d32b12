"""A workflow's definition: its steps, the edges between them, and the checks a definition must pass.

    name: nightly-etl
    schedule: {kind: cron, cron: "0 2 * * *", timezone: Europe/Paris}
    tasks:
      - {name: extract, type: command, payload: {argv: [etl, extract]}}
      - {name: load, type: command, payload: {argv: [etl, load]}, depends_on: [extract]}

`sequence:` and `parallel:` are shorthand for the same edges: each item of a sequence depends on every last step of
the item before it; the items of a parallel group share the dependencies of the group and none between them. Groups
nest (`{parallel: [...]}` inside a sequence, `{sequence: [...]}` inside a parallel group).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from taskmill.models import Name, Schedule, TaskBody
from taskmill.states import ScheduleKind

MAX_STEPS = 1000
Problem = dict[str, Any]


class Step(TaskBody):
    """One task of a workflow: a task's fields, its dependencies by name, and whether its failure stops them."""

    depends_on: list[str] = Field(default_factory=list, max_length=MAX_STEPS)
    continue_on_failure: bool = False


class WorkflowCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    description: str = Field("", max_length=2000)
    # None: the workflow runs only when invoked.
    schedule: Schedule | None = None
    active: bool = True
    tasks: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not ({"sequence", "parallel"} & data.keys()):
            return data
        data = dict(data)
        steps: list[Any] = list(data.pop("tasks", None) or [])
        for key in ("sequence", "parallel"):
            if key in data:
                steps.extend(_expand(key, data.pop(key), [])[0])
        data["tasks"] = steps
        return data

    @field_validator("schedule")
    @classmethod
    def _not_immediate(cls, value: Schedule | None) -> Schedule | None:
        if value is not None and value.kind is ScheduleKind.IMMEDIATE:
            raise ValueError("a workflow's schedule is cron, interval or once; leave it out to run only when invoked")
        return value


def _expand(kind: str, items: Any, after: list[str]) -> tuple[list[Any], list[str]]:
    """The steps of a `sequence` or `parallel` group whose steps depend on `after`, and the group's last steps."""
    if not isinstance(items, list) or not items:
        raise ValueError(f"`{kind}` is a non-empty list of steps and groups")
    steps: list[Any] = []
    ends: list[str] = []
    prior = after
    for item in items:
        if isinstance(item, dict) and len(item) == 1 and next(iter(item)) in ("sequence", "parallel"):
            ((inner, members),) = item.items()
            more, last = _expand(inner, members, prior)
        elif isinstance(item, dict):
            step = dict(item)
            step["depends_on"] = [*prior, *step.get("depends_on", [])]
            more, last = [step], [str(step.get("name"))]
        else:
            raise ValueError(f"an item of `{kind}` is a step (a mapping with a name) or a sequence or parallel group")
        steps.extend(more)
        if kind == "sequence":
            prior = last
            ends = last
        else:
            ends.extend(last)
    return steps, ends


def graph_problems(spec: WorkflowCreate, *where: int | str) -> list[Problem]:
    """What the step graph gets wrong, each at its field: a repeated name, an unknown or own dependency, a cycle
    (named step by step)."""
    problems: list[Problem] = []

    def problem(i: int, field: str, msg: str) -> None:
        problems.append({"loc": ("body", *where, "tasks", i, field), "msg": msg, "type": "value_error"})

    first: dict[str, int] = {}
    for i, step in enumerate(spec.tasks):
        if step.name in first:
            problem(i, "name", f"repeats the name of step {first[step.name]} ({step.name!r})")
        first.setdefault(step.name, i)
    for i, step in enumerate(spec.tasks):
        for name in step.depends_on:
            if name == step.name:
                problem(i, "depends_on", f"step {name!r} cannot depend on itself")
            elif name not in first:
                problem(i, "depends_on", f"no step named {name!r} in this workflow")
        if len(set(step.depends_on)) != len(step.depends_on):
            problem(i, "depends_on", "names a step twice")
    if not problems and (cycle := find_cycle({s.name: s.depends_on for s in spec.tasks})):
        problem(first[cycle[0]], "depends_on", "a cycle: " + " -> ".join([*cycle, cycle[0]]))
    return problems


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle of `edges` (step -> the steps it depends on), in dependency order, or None."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    for start in edges:
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[Iterator[str]] = []
        state[start] = 1
        path.append(start)
        stack.append(iter(edges[start]))
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(edges.get(nxt, [])))
    return None


@dataclass(frozen=True, slots=True)
class Workflow:
    id: int
    name: str
    description: str
    schedule: Schedule | None
    active: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Workflow:
        schedule = None
        if r["schedule_kind"] is not None:
            schedule = Schedule(
                kind=ScheduleKind(r["schedule_kind"]),
                cron=r["cron"],
                every_seconds=r["every_seconds"],
                at=r["run_at"],
                timezone=r["timezone"],
            )
        return cls(
            r["id"],
            r["name"],
            r["description"],
            schedule,
            r["active"],
            r["created_by"],
            r["created_at"],
            r["updated_at"],
        )
