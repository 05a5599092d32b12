"""The built-in task types, by name."""

from __future__ import annotations

from taskmill.tasktypes.base import RunContext, TaskFailed, TaskSkipped, TaskType
from taskmill.tasktypes.command import COMMAND
from taskmill.tasktypes.http import HTTP
from taskmill.tasktypes.noop import NOOP
from taskmill.tasktypes.sleep import SLEEP

BUILTIN: dict[str, TaskType] = {t.name: t for t in (NOOP, SLEEP, HTTP, COMMAND)}
# The one type whose runs need more than `tasks:write` to be made: `tasks:command` in the API, and to be named in
# TASKMILL_SUBMIT_TYPES on the submit queue; an http answer never spawns one.
COMMAND_TYPE = COMMAND.name

__all__ = ["BUILTIN", "COMMAND_TYPE", "RunContext", "TaskFailed", "TaskSkipped", "TaskType"]
