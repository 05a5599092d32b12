"""The JWT matrix: every way a bearer token can be missing or wrong is a 401 problem+json (403 for a missing scope)
with a reason a person understands and an RFC 6750 WWW-Authenticate challenge, for an HS256 API and for an RS256
one with issuer and audience configured. One API of each kind serves the whole module."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.api.conftest import SECRET, app_client
from tests.conftest import isolated_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _key_pair() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public.decode()


PRIVATE, PUBLIC = _key_pair()
OTHER_PRIVATE, _ = _key_pair()


async def _served(template_db: str, **update: str) -> AsyncIterator[httpx.AsyncClient]:
    async with isolated_settings(template_db) as settings, app_client(settings.model_copy(update=update)) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(template_db: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _served(template_db, jwt_secret=SECRET):
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rs_client(template_db: str) -> AsyncIterator[httpx.AsyncClient]:
    update = {"jwt_public_key": PUBLIC, "jwt_issuer": "https://id.example", "jwt_audience": "taskmill"}
    async for c in _served(template_db, **update):
        yield c


def token(claims: dict[str, Any], key: str | bytes = SECRET, algorithm: str = "HS256") -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt.encode(claims, key, algorithm=algorithm)}"}


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "scope": "tasks:read", "exp": int(time.time()) + 600, **extra}


def b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."}


def forged(
    payload: bytes, header: bytes = b'{"alg":"HS256","typ":"JWT"}', key: bytes = SECRET.encode()
) -> dict[str, str]:
    """A token signed by hand, for claims PyJWT will not encode (a number as `sub`)."""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    signature = b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return {"Authorization": f"Bearer {signing_input}.{signature}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NO_TOKEN = 'Bearer realm="taskmill"'
BAD_TOKEN = 'Bearer realm="taskmill", error="invalid_token"'
LATER = int(time.time()) + 600


@pytest.mark.parametrize(
    ("headers", "detail", "challenge"),
    [
        ({}, "a bearer token is required", NO_TOKEN),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "a bearer token is required", NO_TOKEN),
        ({"Authorization": "Bearer"}, "a bearer token is required", NO_TOKEN),
        ({"Authorization": "Bearer    "}, "a bearer token is required", NO_TOKEN),
        ({"Authorization": "Bearer not-a-jwt"}, "invalid token: Not enough segments", BAD_TOKEN),
        ({"Authorization": "Bearer a.b.c"}, "invalid token", BAD_TOKEN),
        ({"Authorization": "Bearer " + "A" * 100_000}, "invalid token: longer than 8192 characters", BAD_TOKEN),
        (token(claims(pad="x" * 9000)), "longer than 8192 characters", BAD_TOKEN),
        (token(claims(exp=int(time.time()) - 10)), "Signature has expired", BAD_TOKEN),
        (token({"sub": "alice", "scope": "tasks:read"}), 'missing the "exp" claim', BAD_TOKEN),
        (token({"scope": "tasks:read", "exp": LATER}), 'missing the "sub" claim', BAD_TOKEN),
        (token(claims(), key="another-secret-that-is-long-enough-for-it"), "Signature verification failed", BAD_TOKEN),
        (unsigned(claims()), "signed with 'none'; this API accepts HS256 only", BAD_TOKEN),
        (token(claims(nbf=int(time.time()) + 600)), "not yet valid", BAD_TOKEN),
        (forged(b'{"sub":5,"scope":"tasks:read","exp":%d}' % LATER), "Subject must be a string", BAD_TOKEN),
        (forged(b'{"sub":"a","scope":["admin"],"exp":%d}' % LATER), "`scope` is a string", BAD_TOKEN),
        (forged(b'{"sub":"","scope":"admin","exp":%d}' % LATER), "`sub` has 1 to 255 characters", BAD_TOKEN),
        (token(claims(sub="a" * 256)), "`sub` has 1 to 255 characters", BAD_TOKEN),
        (forged(b'{"sub":"a\\u0000b","scope":"admin","exp":%d}' % LATER), "control characters", BAD_TOKEN),
        (forged(b'{"sub":"a\\nb","scope":"admin","exp":%d}' % LATER), "control characters", BAD_TOKEN),
        (forged(b'{"sub":"a\\ud800","scope":"admin","exp":%d}' % LATER), "unpaired surrogate", BAD_TOKEN),
        (forged(b'{"sub":"a","exp":1e999}'), "(exp) must be an integer", BAD_TOKEN),
        (forged(b"[1, 2]"), "must be a json object", BAD_TOKEN),
        (forged(b'{"sub":"a","exp":%d}' % LATER, header=b'{"alg":"HS256","crit":["exp"]}'), "critical", BAD_TOKEN),
    ],
)
async def test_requests_without_a_valid_token_get_401(
    client: httpx.AsyncClient, headers: dict[str, str], detail: str, challenge: str
) -> None:
    response = await client.get("/tasks", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == challenge
    assert response.json()["title"] == "Unauthorized"
    assert detail in response.json()["detail"]


async def test_an_rs256_token_on_an_hs256_api_is_401_naming_both_algorithms(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks", headers=token(claims(), PRIVATE, "RS256"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BAD_TOKEN
    assert response.json()["detail"] == "invalid token: signed with 'RS256'; this API accepts HS256 only"


def hs256_signed_with(public_key: str, payload: dict[str, Any]) -> dict[str, str]:
    """HS256 with the RS256 public key as the secret: the algorithm-confusion attack (forged by hand, since PyJWT
    itself refuses to sign with a PEM key as an HMAC secret)."""
    return forged(json.dumps(payload).encode(), key=public_key.encode())


GOOD = {"iss": "https://id.example", "aud": "taskmill"}


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("wrong issuer", "Invalid issuer"),
        ("wrong audience", "Audience doesn't match"),
        ("no issuer", 'missing the "iss" claim'),
        ("no audience", 'missing the "aud" claim'),
        ("audience a number", "Invalid claim format in token"),
        ("expired", "Signature has expired"),
        ("another key pair", "Signature verification failed"),
        ("hs256 with the public key", "signed with 'HS256'; this API accepts RS256 only"),
        ("hs256 with a secret", "signed with 'HS256'; this API accepts RS256 only"),
        ("alg none", "signed with 'none'; this API accepts RS256 only"),
    ],
)
async def test_rs256_tokens_are_checked_for_key_algorithm_issuer_and_audience(
    rs_client: httpx.AsyncClient, case: str, detail: str
) -> None:
    private, public = PRIVATE, PUBLIC
    assert (await rs_client.get("/tasks", headers=token(claims(**GOOD), private, "RS256"))).status_code == 200
    headers = {
        "wrong issuer": lambda: token(claims(iss="https://evil.example", aud="taskmill"), private, "RS256"),
        "wrong audience": lambda: token(claims(iss="https://id.example", aud="other"), private, "RS256"),
        "no issuer": lambda: token(claims(aud="taskmill"), private, "RS256"),
        "no audience": lambda: token(claims(iss="https://id.example"), private, "RS256"),
        "audience a number": lambda: token(claims(iss="https://id.example", aud=5), private, "RS256"),
        "expired": lambda: token(claims(**GOOD, exp=int(time.time()) - 10), private, "RS256"),
        "another key pair": lambda: token(claims(**GOOD), OTHER_PRIVATE, "RS256"),
        "hs256 with the public key": lambda: hs256_signed_with(public, claims(**GOOD)),
        "hs256 with a secret": lambda: token(claims(**GOOD)),
        "alg none": lambda: unsigned(claims(**GOOD)),
    }[case]()
    response = await rs_client.get("/tasks", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == BAD_TOKEN
    assert detail in response.json()["detail"]
