"""Task types the API and `taskmill.client.defer` accept: the built-in ones (their pydantic models, checked by
TaskCreate itself) and the Python handlers processors registered (`task_types`), whose payloads are checked against
the JSON schema they registered. No user code is imported here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from taskmill.models import TaskBody
from taskmill.store.tasktypes import Registered
from taskmill.tasktypes import BUILTIN

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

Problem = dict[str, Any]


@lru_cache(maxsize=256)
def _validator(schema: str) -> Draft202012Validator:
    # Imported at the first handler payload checked: every role loads this module, and jsonschema costs each
    # process 55 ms of CPU to import.
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema))


def type_problems(body: TaskBody, registry: Mapping[str, Registered], *where: int | str) -> list[Problem]:
    """A type nobody serves, or a payload that does not fit a handler's schema: one problem per field."""
    if body.type in BUILTIN:
        return []
    found = registry.get(body.type)
    if found is None:
        known = ", ".join(sorted([*BUILTIN, *registry]))
        reason = f"unknown task type {body.type!r} (no processor registered it); known: {known}"
        return [{"loc": ("body", *where, "type"), "msg": reason, "type": "value_error"}]
    validator = _validator(json.dumps(found.payload_schema, sort_keys=True))
    errors = sorted(validator.iter_errors(body.payload), key=lambda e: [str(p) for p in e.absolute_path])
    return [
        {"loc": ("body", *where, "payload", *map(str, e.absolute_path)), "msg": e.message, "type": "value_error"}
        for e in errors
    ]


def default_timeout(body: TaskBody, registry: Mapping[str, Registered]) -> float | None:
    """The handler's own `timeout_seconds`, for a task of its type that names none."""
    found = registry.get(body.type)
    return None if found is None else found.timeout_seconds
