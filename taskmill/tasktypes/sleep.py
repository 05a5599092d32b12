"""`sleep`: waits `ms` milliseconds, for tests and benchmarks of long runs and timeouts."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field

from taskmill.tasktypes.base import JsonObject, RunContext, TaskType


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ms: int = Field(ge=0, le=86_400_000)


async def run(payload: SleepPayload, ctx: RunContext) -> JsonObject:
    await asyncio.sleep(payload.ms / 1000)
    return {"slept_ms": payload.ms}


SLEEP = TaskType("sleep", "Sleeps for `ms` milliseconds.", SleepPayload, run)
