"""Task secrets at rest and in flight: Fernet (AES-128-CBC + HMAC-SHA256, from cryptography) with the key in
TASKMILL_SECRET_KEY. The API encrypts, the database and the broker only ever hold ciphertext, the processor
decrypts at run time.

The setting may hold several keys, comma-separated (MultiFernet): the first encrypts, any of them decrypts. To
rotate, put a new key first, restart the API and processors, run `taskmill rotate-secrets` (every stored secret is
encrypted again with the first key), and drop the old key once no message sealed with it can still be in a queue
(a retry waits a day at most)."""

from __future__ import annotations

import hashlib
import hmac
import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretsError(ValueError):
    """Secrets that cannot be sealed or opened: no key, or the wrong one."""


def keyring(keys: str) -> MultiFernet:
    """The keys of TASKMILL_SECRET_KEY (comma-separated, the first encrypts)."""
    return MultiFernet([Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()])


def seal(key: str, values: dict[str, str]) -> bytes | None:
    if not values:
        return None
    if not key:
        raise SecretsError("the server has no TASKMILL_SECRET_KEY to encrypt secrets with")
    return keyring(key).encrypt(json.dumps(values).encode())


def reseal(key: str, token: bytes) -> bytes:
    """The same secrets encrypted with the first key (InvalidToken when no key opens them)."""
    return keyring(key).rotate(token)


def open_sealed(key: str, token: str) -> dict[str, str]:
    if not key:
        raise SecretsError("this processor has no TASKMILL_SECRET_KEY to decrypt the task's secrets")
    try:
        values = json.loads(keyring(key).decrypt(token.encode()))
    except (InvalidToken, ValueError) as exc:
        raise SecretsError("the task's secrets cannot be decrypted with this processor's key") from exc
    if not isinstance(values, dict):
        raise SecretsError("the task's secrets are not a JSON object")
    return {str(k): str(v) for k, v in values.items()}


def digests(key: str, values: dict[str, str]) -> dict[str, str]:
    """Each secret's keyed digest (HMAC-SHA256 under a key derived from the first of TASKMILL_SECRET_KEY), stored
    beside the ciphertext: the API can tell whether a value it is given is the one it holds (`taskmill apply`
    rotating a secret) without decrypting anything, and a reader of the database learns nothing of the values. After
    a key rotation the digests are of the old key: the next comparison finds every secret changed, once."""
    if not values:
        return {}
    if not key:
        raise SecretsError("the server has no TASKMILL_SECRET_KEY to encrypt secrets with")
    first = next(k.strip() for k in key.split(",") if k.strip())
    mac_key = hashlib.sha256(b"taskmill secret digest\0" + first.encode()).digest()
    return {
        name: hmac.new(mac_key, name.encode() + b"\0" + value.encode(), hashlib.sha256).hexdigest()
        for name, value in values.items()
    }


def changed(key: str, values: dict[str, str], stored: dict[str, str]) -> list[str]:
    """The names among `values` whose value is not the one whose digest is stored (or which are not stored)."""
    given = digests(key, values)
    return sorted(name for name, d in given.items() if not hmac.compare_digest(d, stored.get(name, "")))
