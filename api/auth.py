"""JWT bearer auth (PyJWT): HS256 with JWT_SECRET or RS256 with JWT_PUBLIC_KEY; `exp` required; issuer and
audience checked when configured; scopes from the standard space-separated `scope` claim."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jwt
from fastapi import HTTPException, Request
from jwt.algorithms import RSAAlgorithm

from taskmill.settings import ConfigError, Settings
from taskmill.tokens import check_hs256_secret

READ, WRITE, ADMIN = "tasks:read", "tasks:write", "admin"
# Creating or editing a command task: it runs a program on the processors' hosts, which tasks:write alone may not.
COMMAND = "tasks:command"

# Far above any real token (an RS256 token with a dozen claims is under 1 KB); a longer one is refused unread.
MAX_TOKEN_CHARS = 8192
# The subject is stored as the creator of what the token creates: text PostgreSQL holds, of a sane length.
MAX_SUBJECT_CHARS = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        """Whether the token grants `scope` (admin grants every scope)."""
        return scope in self.scopes or ADMIN in self.scopes

    def require(self, scope: str, doing: str) -> None:
        """403 naming the missing scope and what it is needed for, unless the token grants it."""
        if not self.may(scope):
            challenge = f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'
            raise HTTPException(403, f"{doing} needs the scope {scope!r}", headers={"WWW-Authenticate": challenge})


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        if settings.jwt_public_key:
            try:
                RSAAlgorithm(RSAAlgorithm.SHA256).prepare_key(settings.jwt_public_key)
            except (jwt.InvalidKeyError, ValueError, TypeError):
                # Else every request would be refused as if its token were bad.
                raise ConfigError("JWT_PUBLIC_KEY is not an RSA public key in PEM form") from None
            self._key, self._algorithm = settings.jwt_public_key, "RS256"
        elif settings.jwt_secret:
            check_hs256_secret(settings.jwt_secret)
            self._key, self._algorithm = settings.jwt_secret, "HS256"
        else:
            raise ConfigError("set JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256): the API does not run without auth")
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None

    def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_CHARS:
            raise _unauthorized(f"invalid token: longer than {MAX_TOKEN_CHARS} characters")
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
        except jwt.InvalidAlgorithmError:
            alg = jwt.get_unverified_header(token).get("alg")
            raise _unauthorized(
                f"invalid token: signed with {alg!r}; this API accepts {self._algorithm} only"
            ) from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        subject, scope = claims["sub"], claims.get("scope", "")
        if not isinstance(scope, str):
            raise _unauthorized("invalid token: `scope` is a string of space-separated scopes")
        if problem := _subject_problem(subject):
            raise _unauthorized(f"invalid token: `sub` {problem}")
        return Principal(subject, frozenset(scope.split()))


def _subject_problem(subject: object) -> str | None:
    if not isinstance(subject, str):
        return "is a string"
    if not 0 < len(subject) <= MAX_SUBJECT_CHARS:
        return f"has 1 to {MAX_SUBJECT_CHARS} characters"
    if _CONTROL.search(subject):
        return "cannot hold control characters"
    try:
        subject.encode()
    except UnicodeEncodeError:
        return "cannot hold an unpaired surrogate"
    return None


# RFC 6750: no error code when no token came; invalid_token or insufficient_scope otherwise.
_CHALLENGE = 'Bearer realm="taskmill"'


def _unauthorized(detail: str, *, token_given: bool = True) -> HTTPException:
    challenge = f'{_CHALLENGE}, error="invalid_token"' if token_given else _CHALLENGE
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller's principal, 401 without a valid token, 403 without `scope` (admin has all; an
    empty scope asks only for a valid token)."""

    async def dependency(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise _unauthorized("a bearer token is required", token_given=False)
        principal = request.app.state.auth.verify(token.strip())
        assert isinstance(principal, Principal)
        if scope and not principal.may(scope):
            challenge = f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'
            raise HTTPException(403, f"the token lacks the scope {scope!r}", headers={"WWW-Authenticate": challenge})
        return principal

    return dependency
