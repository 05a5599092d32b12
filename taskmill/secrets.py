"""Task secrets at rest and in flight: Fernet (AES-128-CBC + HMAC-SHA256, from cryptography) with the key in
TASKMILL_SECRET_KEY. The API encrypts, the database and the broker only ever hold ciphertext, the processor
decrypts at run time."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken


class SecretsError(ValueError):
    """Secrets that cannot be sealed or opened: no key, or the wrong one."""


def seal(key: str, values: dict[str, str]) -> bytes | None:
    if not values:
        return None
    if not key:
        raise SecretsError("the server has no TASKMILL_SECRET_KEY to encrypt secrets with")
    return Fernet(key.encode()).encrypt(json.dumps(values).encode())


def open_sealed(key: str, token: str) -> dict[str, str]:
    if not key:
        raise SecretsError("this processor has no TASKMILL_SECRET_KEY to decrypt the task's secrets")
    try:
        values = json.loads(Fernet(key.encode()).decrypt(token.encode()))
    except (InvalidToken, ValueError) as exc:
        raise SecretsError("the task's secrets cannot be decrypted with this processor's key") from exc
    if not isinstance(values, dict):
        raise SecretsError("the task's secrets are not a JSON object")
    return {str(k): str(v) for k, v in values.items()}
