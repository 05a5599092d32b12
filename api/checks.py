"""What the installation refuses in a task's or a step's definition that the model itself accepts, and the
defaults it fills in."""

from __future__ import annotations

from typing import Any, TypeVar

from taskmill.models import DEFAULT_TIMEOUT_S, TaskBody
from taskmill.settings import Settings
from taskmill.store.tasktypes import Registered
from taskmill.typecheck import default_timeout, type_problems

Registry = dict[str, Registered]
Body = TypeVar("Body", bound=TaskBody)


def body_problems(body: TaskBody, settings: Settings, registry: Registry, *where: int | str) -> list[dict[str, Any]]:
    """A type no processor serves, a payload that does not fit a handler's schema, a timeout over
    TASKMILL_MAX_TIMEOUT_S; each at its field."""
    problems = type_problems(body, registry, *where)
    limit = settings.max_timeout_s
    if "timeout_seconds" in body.model_fields_set and body.timeout_seconds > limit:
        reason = f"is more than this installation allows ({limit:g} s, TASKMILL_MAX_TIMEOUT_S)"
        problems.append({"loc": ("body", *where, "timeout_seconds"), "msg": reason, "type": "value_error"})
    return problems


def fitted(body: Body, settings: Settings, registry: Registry) -> Body:
    """A definition that names no timeout gets its handler's, else the default, or the installation's maximum if
    that is lower."""
    if "timeout_seconds" in body.model_fields_set:
        return body
    default = default_timeout(body, registry) or DEFAULT_TIMEOUT_S
    return body.model_copy(update={"timeout_seconds": min(default, settings.max_timeout_s)})
