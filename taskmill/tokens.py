"""Minting JWTs for development and scripts (`taskmill token`); the API verifies them (api/auth.py)."""

from __future__ import annotations

import time

import jwt


def mint(secret: str, subject: str, scopes: str, ttl_s: int = 3600, issuer: str = "", audience: str = "") -> str:
    """An HS256 token from the configured secret (`taskmill token`), for development and scripts."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "scope": scopes, "iat": now, "exp": now + ttl_s}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
