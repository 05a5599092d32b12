"""`taskmill rotate-secrets`: every task's secrets encrypted again with the first key of TASKMILL_SECRET_KEY, so
the older keys can be dropped. Idempotent: secrets the first key already opens are left alone."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken

from taskmill.db import Connection
from taskmill.secrets import keyring
from taskmill.store.tasks import reseal_secrets, sealed_secrets


@dataclass(slots=True)
class Rotation:
    resealed: int = 0
    current: int = 0  # already under the first key
    changed_meanwhile: int = 0  # edited while this ran: sealed by the API with the first key anyway
    unreadable: list[int] = field(default_factory=list)  # task ids no key opens


async def rotate_secrets(conn: Connection, keys: str, batch: int = 500) -> Rotation:
    ring = keyring(keys)
    first = Fernet(keys.split(",")[0].strip().encode())
    done = Rotation()
    after = 0
    while rows := await sealed_secrets(conn, after, batch):
        after = rows[-1][0]
        changes = []
        for task_id, token in rows:
            try:
                first.decrypt(token)
            except InvalidToken:
                pass
            else:
                done.current += 1
                continue
            try:
                changes.append((task_id, token, ring.rotate(token)))
            except InvalidToken:
                done.unreadable.append(task_id)
        written = await reseal_secrets(conn, changes)
        done.resealed += written
        done.changed_meanwhile += len(changes) - written
    return done
