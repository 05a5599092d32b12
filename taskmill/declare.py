"""Tasks and workflows as YAML files: `taskmill apply -f FILE|DIR` makes the installation match them, by name,
and `taskmill get tasks|workflows [NAME] -o yaml` writes what is there in the same format.

    kind: workflow            # or: kind: task (the fields of POST /tasks)
    name: nightly-etl
    schedule: {kind: cron, cron: "0 2 * * *", timezone: Europe/Paris}
    tasks:
      - {name: extract, type: command, payload: {argv: [etl, extract]}}
      - {name: load, type: command, payload: {argv: [etl, load]}, depends_on: [extract]}

A file holds any number of documents (`---`); a directory, every *.yaml and *.yml file in it, in name order.
Everything is checked before anything is sent: an error names its file, line and field, and nothing is applied.
Applying is idempotent: an object whose definition matches is `unchanged` and is not written. A field the file leaves
out means its default, except a timeout (a handler's type brings its own) and secrets, which are write-only: they
are sent when the file names them, and compared by name and by the keyed digest the API keeps of each value.
`--prune` deletes the tasks and workflows the files do not name (not the runs that code made with `defer` or
`spawn`), so the files are the whole truth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel, ValidationError

from taskmill.models import Schedule, TaskCreate
from taskmill.workflows import WorkflowCreate, graph_problems

KINDS: dict[str, type[BaseModel]] = {"task": TaskCreate, "workflow": WorkflowCreate}
PLURAL = {"tasks": "task", "workflows": "workflow"}
# Names the runtime makes (taskmill.client.defer, taskmill/spawn.py): never pruned, never written by `get`.
RUNTIME_PREFIXES = ("defer:", "spawn:")
# The fields a definition holds (what the API returns beside them, ids, times, next and last runs, is the server's).
_DEFINED = {"task": set(TaskCreate.model_fields), "workflow": set(WorkflowCreate.model_fields)}


class DeclareError(Exception):
    """What stops `apply` or `get`: every problem found, one a line (file:line: field: reason)."""


@dataclass
class Document:
    """One object of a file: its kind, its fields, and where each field's value starts (path -> line)."""

    path: Path
    kind: str
    data: dict[str, Any]
    lines: dict[tuple[str | int, ...], int]
    spec: BaseModel | None = None

    @property
    def name(self) -> str:
        return str(self.data.get("name", ""))

    def line_of(self, loc: tuple[str | int, ...]) -> int:
        """The line of the deepest part of `loc` the file has (the document's first line at worst)."""
        for n in range(len(loc), -1, -1):
            if (line := self.lines.get(tuple(loc[:n]))) is not None:
                return line
        return 1

    def problem(self, loc: tuple[str | int, ...], msg: str) -> str:
        where = ".".join(str(p) for p in loc) or "(document)"
        return f"{self.path}:{self.line_of(loc)}: {self.kind} {self.name or '?'}: {where}: {msg}"


def _lines(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                out[(*path, key.value)] = key.start_mark.line + 1
                _lines(value, (*path, key.value), out)
                out[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


def files_of(target: Path) -> list[Path]:
    if target.is_dir():
        return sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [target]


def load(targets: list[Path]) -> list[Document]:
    """Every document of the files, parsed and checked; DeclareError lists every problem."""
    docs: list[Document] = []
    problems: list[str] = []
    for target in targets:
        if not target.exists():
            problems.append(f"{target}: no such file or directory")
            continue
        for path in files_of(target):
            try:
                docs.extend(_parse(path))
            except DeclareError as exc:
                problems.append(str(exc))
    seen: dict[tuple[str, str], Document] = {}
    for doc in docs:
        problems.extend(_check(doc))
        key = (doc.kind, doc.name)
        if key in seen and doc.name:
            first = seen[key]
            problems.append(doc.problem(("name",), f"defined again (first at {first.path}:{first.line_of(('name',))})"))
        seen.setdefault(key, doc)
    if problems:
        raise DeclareError("\n".join(problems))
    return docs


def _parse(path: Path) -> Iterator[Document]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeclareError(f"{path}: cannot read: {exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            value = loader.construct_document(node)
            if value is None:
                continue
            line = node.start_mark.line + 1
            if not isinstance(value, dict):
                raise DeclareError(f"{path}:{line}: a document is a mapping with `kind` and `name`")
            lines: dict[tuple[str | int, ...], int] = {}
            _lines(node, (), lines)
            kind = value.pop("kind", None)
            if kind not in KINDS:
                raise DeclareError(f"{path}:{lines.get(('kind',), line)}: kind: one of task, workflow (got {kind!r})")
            yield Document(path, kind, value, lines)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise DeclareError(f"{where}: not YAML: {getattr(exc, 'problem', None) or exc}") from None
    finally:
        loader.dispose()


def _check(doc: Document) -> list[str]:
    try:
        doc.spec = KINDS[doc.kind].model_validate(doc.data)
    except ValidationError as exc:
        return [doc.problem(tuple(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
    if isinstance(doc.spec, WorkflowCreate):
        return [doc.problem(tuple(p["loc"][1:]), p["msg"]) for p in graph_problems(doc.spec)]
    return []


# -- comparing with what the API holds ------------------------------------------------------------------------------


def _wanted(spec: BaseModel) -> dict[str, Any]:
    """A definition as compared: every field (defaults for those left out), secrets by name, and no timeout the
    file does not name."""
    out: dict[str, Any] = {}
    for name in type(spec).model_fields:
        value = getattr(spec, name)
        if name == "timeout_seconds" and name not in spec.model_fields_set:
            continue
        if name == "secrets":
            if value:
                out[name] = sorted(value)
            continue
        if name == "tasks":
            value = [_wanted(step) for step in value]
        elif isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        out[name] = value
    return out


def _have(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """What the API returned, in the shape of `wanted` (its fields only; a schedule normalized the same way)."""
    out: dict[str, Any] = {}
    for name, value in current.items():
        if name not in wanted:
            continue
        if name == "schedule" and value is not None:
            value = Schedule.model_validate(value).model_dump(mode="json")
        elif name == "tasks":
            value = [_have(step, w) for step, w in zip(value, wanted["tasks"], strict=False)] + [
                step for step in value[len(wanted["tasks"]) :]
            ]
        elif name == "secrets":
            value = sorted(value)
        out[name] = value
    return out


def differences(wanted: Any, have: Any, path: str = "") -> list[str]:
    """The fields that differ, as dotted paths (`schedule.cron`, `tasks[1].payload`)."""
    if isinstance(wanted, dict) and isinstance(have, dict):
        out: list[str] = []
        for key in wanted.keys() | have.keys():
            out += differences(wanted.get(key), have.get(key), f"{path}.{key}" if path else str(key))
        return sorted(out)
    if isinstance(wanted, list) and isinstance(have, list) and path.endswith("tasks"):
        if len(wanted) != len(have):
            return [path]
        return [d for i, (w, h) in enumerate(zip(wanted, have, strict=True)) for d in differences(w, h, f"{path}[{i}]")]
    if isinstance(wanted, float | int) and isinstance(have, float | int) and not isinstance(wanted, bool):
        return [] if float(wanted) == float(have) else [path]
    if isinstance(wanted, str) and isinstance(have, str) and path.endswith(".at"):
        return [] if datetime.fromisoformat(wanted) == datetime.fromisoformat(have) else [path]
    return [] if wanted == have else [path]


# -- the API --------------------------------------------------------------------------------------------------------


class Refused(DeclareError):
    """The API answered 4xx or 5xx; `errors` are its fields and reasons when it named them (a 422)."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


@dataclass
class Api:
    client: httpx.Client

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DeclareError(f"cannot reach the API at {self.client.base_url}: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text[:500]
            errors = body.get("errors") if isinstance(body, dict) else None
            detail = body.get("detail", body) if isinstance(body, dict) else body
            raise Refused(f"{method} {path}: {response.status_code} {detail}", errors or [])
        return response.json() if response.content else None

    def every(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.call("GET", path, params={"limit": 500, **({"cursor": cursor} if cursor else {})})
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items


def _current(api: Api) -> dict[str, dict[str, dict[str, Any]]]:
    """Every task and workflow the API holds, by kind and name."""
    return {
        "task": {t["name"]: t for t in api.every("/tasks")},
        "workflow": {w["name"]: w for w in api.every("/workflows")},
    }


def _body(doc: Document) -> dict[str, Any]:
    """The request body: the document's own fields (the API fills in the defaults)."""
    body: dict[str, Any] = json.loads(json.dumps(doc.data, default=str))
    return body


def apply(api: Api, docs: list[Document], *, dry_run: bool = False, prune: bool = False) -> list[str]:
    """Makes the API match the documents; returns a line per object (`task/x created`, `workflow/y changed
    (schedule.cron)`, `... unchanged`, `... deleted`)."""
    current = _current(api)
    report: list[str] = []
    suffix = " (dry run)" if dry_run else ""
    for doc in docs:
        assert doc.spec is not None
        wanted = _wanted(doc.spec)
        existing = current[doc.kind].get(doc.name)
        label = f"{doc.kind}/{doc.name}"
        if existing is None:
            if not dry_run:
                _write(api, doc, "POST", f"/{doc.kind}s")
            report.append(f"{label} created{suffix}")
            continue
        changed = differences(wanted, _have(existing, wanted))
        changed += _secrets_changed(api, doc, existing, changed)
        if not changed:
            report.append(f"{label} unchanged")
            continue
        if not dry_run:
            target = f"/tasks/{existing['id']}" if doc.kind == "task" else f"/workflows/{doc.name}"
            _write(api, doc, "PUT", target)
        report.append(f"{label} changed ({', '.join(changed)}){suffix}")
    if prune:
        named = {(d.kind, d.name) for d in docs}
        for kind, objects in current.items():
            for name, obj in sorted(objects.items()):
                if (kind, name) in named or name.startswith(RUNTIME_PREFIXES):
                    continue
                if not dry_run:
                    api.call("DELETE", f"/tasks/{obj['id']}" if kind == "task" else f"/workflows/{name}")
                report.append(f"{kind}/{name} deleted{suffix}")
    return report


def _secrets_changed(api: Api, doc: Document, existing: dict[str, Any], changed: list[str]) -> list[str]:
    """The secrets the file names whose values are not the stored ones (the API compares keyed digests; nothing is
    read back), as `secrets.NAME` or `tasks[i].secrets.NAME`. Asked only when their names match already: a write
    follows anyway otherwise, which sends them."""
    spec = doc.spec
    if isinstance(spec, TaskCreate):
        if not spec.secrets or "secrets" in changed:
            return []
        found = api.call("POST", f"/tasks/{existing['id']}/secrets/compare", json={"secrets": spec.secret_values()})
        return [f"secrets.{name}" for name in found["changed"]]
    assert isinstance(spec, WorkflowCreate)
    if "tasks" in changed:  # the steps differ in number: all of them are sent
        return []
    steps = {
        step.name: step.secret_values()
        for i, step in enumerate(spec.tasks)
        if step.secrets and f"tasks[{i}].secrets" not in changed
    }
    if not steps:
        return []
    found = api.call("POST", f"/workflows/{doc.name}/secrets/compare", json={"tasks": steps})["changed"]
    index = {step.name: i for i, step in enumerate(spec.tasks)}
    return sorted(f"tasks[{index[step]}].secrets.{name}" for step, names in found.items() for name in names)


def _write(api: Api, doc: Document, method: str, path: str) -> None:
    """Sends the document; a refusal comes back at the document's lines (each field the API named at its own)."""
    try:
        api.call(method, path, json=_body(doc))
    except Refused as exc:
        if not exc.errors:
            raise DeclareError(f"{doc.path}:{doc.line_of(())}: {doc.kind} {doc.name}: {exc}") from None
        problems = (
            doc.problem(tuple(int(p) if p.isdigit() else p for p in e["field"].split(".")), e["reason"])
            for e in exc.errors
        )
        raise DeclareError("\n".join(problems)) from None


# -- get ------------------------------------------------------------------------------------------------------------


def _definition(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """An object as the API returned it, as a document `apply` takes back unchanged."""
    out: dict[str, Any] = {"kind": kind}
    for name, value in obj.items():
        if name not in _DEFINED[kind] or name == "secrets":
            continue  # secrets are write-only: `apply` keeps them when the file names none
        if name == "schedule" and value is not None:
            value = {k: v for k, v in value.items() if v is not None}
        if name == "tasks":
            value = [{k: v for k, v in step.items() if k != "secrets" or v} for step in value]
            for step in value:
                step.pop("secrets", None)
        out[name] = value
    return out


def get(api: Api, what: str, name: str | None, output: str) -> str:
    kind = PLURAL.get(what)
    if kind is None:
        raise DeclareError(f"get: tasks or workflows, not {what!r}")
    if name is not None:
        found = [o for o in _current(api)[kind].values() if o["name"] == name]
        if not found:
            raise DeclareError(f"no {kind} named {name!r}")
    else:
        found = [o for o in _current(api)[kind].values() if not o["name"].startswith(RUNTIME_PREFIXES)]
    docs = [_definition(kind, o) for o in found]
    if output == "json":
        return json.dumps(docs if name is None else docs[0], indent=2)
    return yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True, explicit_start=len(docs) > 1)
