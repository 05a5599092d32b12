"""Every error as application/problem+json (RFC 9457): a title, the status, a detail, and for bad input the
fields and the reasons. Nothing reaches the client as a bare 500 with a traceback."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskmill.db import is_transient
from taskmill.logs import described
from taskmill.secrets import SecretsError

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def invalid(loc: tuple[str, ...], reason: str) -> RequestValidationError:
    """A 422 naming one field, in the shape of FastAPI's own validation errors (so it renders the same)."""
    return RequestValidationError([{"loc": loc, "msg": reason, "type": "value_error"}])


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "(body)"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(tuple(e["loc"])), "reason": str(e["msg"]).removeprefix("Value error, ")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = _unreadable_body(exc.__cause__) if exc.status_code == 400 else None
        response = problem(exc.status_code, _TITLES.get(exc.status_code, "Error"), detail or str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(SecretsError)
    async def no_secrets(request: Request, exc: SecretsError) -> JSONResponse:
        return problem(422, "Invalid request", f"secrets: {exc}", errors=[{"field": "secrets", "reason": str(exc)}])

    @app.exception_handler(asyncpg.DataError)
    async def unstorable(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # Input PostgreSQL refuses to hold (a NUL character, a number out of range): the client's to fix.
        return problem(422, "Invalid request", f"a value cannot be stored: {exc}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):
            # The database went away (a restart, a failover): asking again soon may work.
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path, described(exc))
            response = problem(503, "Unavailable", "the database did not answer; try again in a moment")
            response.headers["Retry-After"] = "1"
            return response
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "the server failed to answer; the error is logged")


def _unreadable_body(cause: BaseException | None) -> str | None:
    """Why FastAPI's "There was an error parsing the body" happened, for the JSON the parser gives up on."""
    if isinstance(cause, RecursionError):
        return "the JSON body is nested too deeply to be read"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the JSON body holds a number of more than 4300 digits"
    return None


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    503: "Unavailable",
}
