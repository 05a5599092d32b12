"""Minting JWTs for development and scripts (`taskmill token`); the API verifies them (api/auth.py)."""

from __future__ import annotations

import time

import jwt

from taskmill.settings import ConfigError

# RFC 7518 3.2: an HS256 key as long as the hash, 32 bytes at least. A shorter one can be guessed offline from any
# token, and whoever guesses it mints admin tokens.
MIN_HS256_SECRET_BYTES = 32


def check_hs256_secret(secret: str) -> None:
    """ConfigError naming JWT_SECRET when the secret is too short to sign with."""
    size = len(secret.encode())
    if size < MIN_HS256_SECRET_BYTES:
        raise ConfigError(
            f"JWT_SECRET is {size} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES} "
            "(make one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )


def mint(secret: str, subject: str, scopes: str, ttl_s: int = 3600, issuer: str = "", audience: str = "") -> str:
    """An HS256 token from the configured secret (`taskmill token`), for development and scripts."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "scope": scopes, "iat": now, "exp": now + ttl_s}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
