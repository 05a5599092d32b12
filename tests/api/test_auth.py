from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.app import create_app
from taskmill.settings import Settings
from tests.api.conftest import SECRET, bearer


def token(claims: dict[str, Any], key: str | bytes = SECRET, algorithm: str = "HS256") -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt.encode(claims, key, algorithm=algorithm)}"}


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "scope": "tasks:read", "exp": int(time.time()) + 600, **extra}


def b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."}


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "a bearer token is required"),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "a bearer token is required"),
        ({"Authorization": "Bearer not-a-jwt"}, "invalid token"),
        (token(claims(exp=int(time.time()) - 10)), "expired"),
        (token({"sub": "alice", "scope": "tasks:read"}), '"exp"'),
        (token(claims(), key="another-secret-that-is-long-enough-for-it"), "Signature verification failed"),
        (unsigned(claims()), "invalid token"),
        (token(claims(nbf=int(time.time()) + 600)), "not yet valid"),
    ],
)
async def test_requests_without_a_valid_token_get_401(
    client: httpx.AsyncClient, headers: dict[str, str], detail: str
) -> None:
    response = await client.get("/tasks", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert detail in response.json()["detail"]


async def test_a_token_without_the_scope_gets_403_and_admin_has_every_scope(client: httpx.AsyncClient) -> None:
    body = {"name": "t", "type": "noop"}
    denied = await client.post("/tasks", json=body, headers=bearer("tasks:read"))
    assert denied.status_code == 403
    assert "tasks:write" in denied.json()["detail"]
    assert (await client.post("/tasks", json=body, headers=bearer("admin"))).status_code == 201


@pytest.fixture
def rsa_keys() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture
async def rs_client(settings: Settings, rsa_keys: tuple[bytes, str]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(
            update={"jwt_public_key": rsa_keys[1], "jwt_issuer": "https://id.example", "jwt_audience": "taskmill"}
        )
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


async def test_rs256_tokens_are_checked_for_key_issuer_and_audience(
    rs_client: httpx.AsyncClient, rsa_keys: tuple[bytes, str]
) -> None:
    private, public = rsa_keys
    good = claims(iss="https://id.example", aud="taskmill")
    assert (await rs_client.get("/tasks", headers=token(good, private, "RS256"))).status_code == 200
    for bad in (
        claims(iss="https://evil.example", aud="taskmill"),
        claims(iss="https://id.example", aud="other"),
        claims(aud="taskmill"),
    ):
        assert (await rs_client.get("/tasks", headers=token(bad, private, "RS256"))).status_code == 401
    # HS256 signed with the public key as the secret: the algorithm-confusion attack (forged by hand, since PyJWT
    # itself refuses to sign it).
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(good)}"
    signature = (
        base64.urlsafe_b64encode(hmac.new(public.encode(), signing_input.encode(), hashlib.sha256).digest())
        .rstrip(b"=")
        .decode()
    )
    confused = {"Authorization": f"Bearer {signing_input}.{signature}"}
    assert (await rs_client.get("/tasks", headers=confused)).status_code == 401


def test_taskmill_token_prints_a_token_the_api_accepts_and_nothing_else() -> None:
    env = {"PATH": "/usr/bin:/bin", "JWT_SECRET": SECRET}
    result = subprocess.run(
        [sys.executable, "-m", "taskmill.cli", "token", "--sub", "ci", "--scope", "tasks:read"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    decoded = jwt.decode(line, SECRET, algorithms=["HS256"])
    assert (decoded["sub"], decoded["scope"]) == ("ci", "tasks:read")
    assert decoded["exp"] > time.time()
    missing = subprocess.run(
        [sys.executable, "-m", "taskmill.cli", "token", "--sub", "ci"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert missing.returncode == 2 and "JWT_SECRET" in missing.stderr


def test_the_api_refuses_to_start_without_a_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskmill.cli", "api"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "taskmill api: set JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256): the API does not run without auth"
    )
