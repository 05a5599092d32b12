"""The built-in task types, by name."""

from __future__ import annotations

from taskmill.tasktypes.base import RunContext, TaskFailed, TaskSkipped, TaskType
from taskmill.tasktypes.command import COMMAND
from taskmill.tasktypes.http import HTTP
from taskmill.tasktypes.noop import NOOP
from taskmill.tasktypes.sleep import SLEEP

BUILTIN: dict[str, TaskType] = {t.name: t for t in (NOOP, SLEEP, HTTP, COMMAND)}

__all__ = ["BUILTIN", "RunContext", "TaskFailed", "TaskSkipped", "TaskType"]
