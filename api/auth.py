"""JWT bearer auth (PyJWT): HS256 with JWT_SECRET or RS256 with JWT_PUBLIC_KEY; `exp` required; issuer and
audience checked when configured; scopes from the standard space-separated `scope` claim."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jwt
from fastapi import HTTPException, Request

from taskmill.settings import ConfigError, Settings

READ, WRITE, ADMIN = "tasks:read", "tasks:write", "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    scopes: frozenset[str]


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        if settings.jwt_public_key:
            self._key, self._algorithm = settings.jwt_public_key, "RS256"
        elif settings.jwt_secret:
            self._key, self._algorithm = settings.jwt_secret, "HS256"
        else:
            raise ConfigError("set JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256): the API does not run without auth")
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None

    def verify(self, token: str) -> Principal:
        try:
            # Only the configured algorithm: a token signed `none`, or HS256 with an RS256 public key, is refused.
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        scope = claims.get("scope", "")
        if not isinstance(scope, str) or not isinstance(claims["sub"], str):
            raise _unauthorized("invalid token: `sub` and `scope` are strings")
        return Principal(claims["sub"], frozenset(scope.split()))


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller's principal, 401 without a valid token, 403 without `scope` (admin has all)."""

    async def dependency(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token:
            raise _unauthorized("a bearer token is required")
        principal = request.app.state.auth.verify(token.strip())
        assert isinstance(principal, Principal)
        if scope not in principal.scopes and ADMIN not in principal.scopes:
            raise HTTPException(403, f"the token lacks the scope {scope!r}")
        return principal

    return dependency
