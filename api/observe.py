"""Every request measured: taskmill_http_requests_total and taskmill_http_request_duration_seconds, by route
template, so ids in paths do not multiply the series.

Traces are FastAPI's own (its native OpenTelemetry support, on the tracer provider taskmill/tracing.py sets up):
a server span per request continuing a `traceparent` the caller sent, with spans of its dependencies and endpoint
inside. The runs a request creates are stored with the context current in the endpoint.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskmill.metrics import HTTP_REQUESTS, HTTP_SECONDS


class Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method: str = scope["method"]
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)
