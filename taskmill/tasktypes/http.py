"""`http`: one HTTP request; the run succeeds when the status is one of the expected ones."""

from __future__ import annotations

import re
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from taskmill.tasktypes.base import JsonObject, RunContext, TaskFailed, TaskType, cap_text

_SECRET_REF = re.compile(r"\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class HttpPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(pattern=r"^https?://", max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    expected_statuses: list[int] = Field(default_factory=lambda: list(range(200, 300)), min_length=1)

    @model_validator(mode="after")
    def _one_body(self) -> HttpPayload:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give either json or body, not both")
        return self


async def run(payload: HttpPayload, ctx: RunContext) -> JsonObject:
    # The run id as idempotency key lets the target drop a repeat of a run it has already served.
    # `{{secrets.NAME}}` in a header value is the task's secret NAME, filled in only here, at run time.
    headers = {"Idempotency-Key": str(ctx.run_id)}
    for name, value in payload.headers.items():
        headers[name] = _SECRET_REF.sub(lambda m: ctx.secrets.get(m.group(1), m.group(0)), value)
    try:
        response = await ctx.http.request(
            payload.method,
            payload.url,
            headers=headers,
            json=payload.json_body,
            content=payload.body,
            timeout=ctx.timeout_s,
        )
    except httpx.HTTPError as exc:
        raise TaskFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
    body, truncated = cap_text(response.content, ctx.output_cap)
    result: JsonObject = {"status": response.status_code, "body": body, "truncated": truncated}
    if response.status_code not in payload.expected_statuses:
        raise TaskFailed(f"unexpected HTTP status {response.status_code}", result)
    return result


HTTP = TaskType("http", "Sends one HTTP request; fails on a status outside `expected_statuses`.", HttpPayload, run)
