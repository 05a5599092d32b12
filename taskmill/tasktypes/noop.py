"""`noop`: succeeds at once and returns its payload, for tests and benchmarks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from taskmill.tasktypes.base import JsonObject, RunContext, TaskType


class NoopPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


async def run(payload: NoopPayload, ctx: RunContext) -> JsonObject:
    return payload.model_dump()


NOOP = TaskType("noop", "Does nothing and returns its payload; any JSON object is accepted.", NoopPayload, run)
