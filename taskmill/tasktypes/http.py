"""`http`: one HTTP request; the run succeeds when the status is one of the expected ones.

The response is streamed: the result keeps its first `output_cap` bytes, and reading stops at
`max_response_bytes`, so a huge or endless body costs neither memory nor more than the run's timeout.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from taskmill import tracing
from taskmill.tasktypes.base import JsonObject, RunContext, TaskFailed, TaskType, cap_text
from taskmill.tasktypes.hostguard import HostRefused
from taskmill.tracing import SpanKind

if TYPE_CHECKING:
    import httpx

    from taskmill.spawn import Flow

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
_SECRET_REF = re.compile(r"\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class HttpPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(pattern=r"^https?://", max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    expected_statuses: list[int] = Field(default_factory=lambda: list(range(200, 300)), min_length=1)

    @field_validator("headers")
    @classmethod
    def _header_syntax(cls, headers: dict[str, str]) -> dict[str, str]:
        # Caught at creation rather than at every run: a CR or LF would otherwise smuggle a header in.
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"header name {name!r} is not an HTTP token")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} cannot contain CR, LF or NUL")
        return headers

    @model_validator(mode="after")
    def _one_body(self) -> HttpPayload:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give either json or body, not both")
        return self


async def _read_capped(response: httpx.Response, keep: int, limit: int) -> tuple[bytes, int, bool]:
    """The first `keep` bytes of the (decoded) body, the bytes read, and whether the body ended before `limit`."""
    kept = bytearray()
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
        if total >= limit:
            return bytes(kept), total, False
    return bytes(kept), total, True


async def run(payload: HttpPayload, ctx: RunContext) -> JsonObject:
    # The run id as idempotency key lets the target drop a repeat of a run it has already served.
    # `{{secrets.NAME}}` in a header value is the task's secret NAME, filled in only here, at run time.
    headers = {"Idempotency-Key": str(ctx.run_id)}
    for name, value in payload.headers.items():
        headers[name] = _SECRET_REF.sub(lambda m: ctx.secrets.get(m.group(1), m.group(0)), value)
    # A child of the run's span when traces are on, its context sent on for the target to continue the trace.
    attributes = {"http.request.method": payload.method, "url.full": _span_url(payload.url)}
    with tracing.span(f"HTTP {payload.method}", SpanKind.CLIENT, attributes) as span:
        if span is not None and (context := tracing.traceparent(span)) is not None:
            headers.setdefault("traceparent", context)
        response, data, read, complete = await _call(payload, ctx, headers)
        if span is not None:
            span.set_attribute("http.response.status_code", response.status_code)
    body, _ = cap_text(data, ctx.output_cap)
    result: JsonObject = {
        "status": response.status_code,
        "body": body,
        "body_bytes": read,
        "complete": complete,
        "truncated": not complete or read > len(data),
    }
    if response.status_code not in payload.expected_statuses:
        raise TaskFailed(f"unexpected HTTP status {response.status_code}", result)
    if ctx.flow is not None and complete and "json" in response.headers.get("content-type", ""):
        _ask_spawns(data, ctx.flow)
    return result


async def _call(
    payload: HttpPayload, ctx: RunContext, headers: dict[str, str]
) -> tuple[httpx.Response, bytes, int, bool]:
    """The response, and its body as far as it is kept: (response, kept bytes, bytes read, read whole)."""
    from httpx import HTTPError  # only the processor runs this (see taskmill/tasktypes/http_client.py)

    try:
        async with ctx.http.stream(
            payload.method,
            payload.url,
            headers=headers,
            json=payload.json_body,
            content=payload.body,
            timeout=ctx.timeout_seconds,
        ) as response:
            # Leaving the block unread closes the connection: an endless body is not drained.
            data, read, complete = await _read_capped(response, ctx.output_cap, ctx.max_response_bytes)
    except HostRefused as exc:
        raise TaskFailed(str(exc), permanent=True) from exc
    except HTTPError as exc:
        raise TaskFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
    return response, data, read, complete


def _span_url(url: str) -> str:
    """The URL as a span may show it: no user, password, query or fragment (where secrets and tokens travel)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _ask_spawns(data: bytes, flow: Flow) -> None:
    """A JSON answer may ask for subtasks: `{"taskmill": {"spawn": [...], "wait": true}}` (taskmill/spawn.py)."""
    from taskmill.spawn import from_http_answer  # it imports the models, which import the task types

    try:
        answer = json.loads(data)
    except ValueError:
        return
    specs, wait = from_http_answer(answer)
    flow.pending.extend(specs)
    flow.wait = flow.wait or wait


HTTP = TaskType("http", "Sends one HTTP request; fails on a status outside `expected_statuses`.", HttpPayload, run)
