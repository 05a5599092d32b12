"""taskmill: a distributed task scheduler. What your own code imports from here: `handler` and `Context` (Python
handlers as task types, taskmill/handlers.py); `taskmill.client` schedules from Python.

They are loaded on first use, so that the roles, which import this package, do not load them until they need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskmill.handlers import Context, handler

__all__ = ["Context", "handler"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from taskmill import handlers

        return getattr(handlers, name)
    raise AttributeError(f"module 'taskmill' has no attribute {name!r}")
