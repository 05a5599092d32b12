"""Poison messages: whatever lands in the work queue, the processors dead-letter what no run can come of and keep
processing good runs."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet

from taskmill.models import TaskCreate
from taskmill.store.tasks import create_task
from tests.faults.harness import Stack
from tests.helpers import new_task


def _message(**changes: Any) -> dict[str, Any]:
    """A well-formed run message (taskmill/messages.py), changed as given."""
    good = {
        "v": 1,
        "run_id": 987_654,
        "task_id": 1,
        "type": "noop",
        "payload": {},
        "attempt": 1,
        "scheduled_time": "2024-01-01T00:00:00Z",
        "timeout_s": 5,
        "max_retries": 0,
        "retry_delay_s": 1,
        "backoff": 1,
    }
    return good | changes


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# name: (body, the start of the dead letter's reason)
POISON: dict[str, tuple[bytes, str]] = {
    "not JSON": (b"\x00not json at all\xff", "unreadable run message"),
    "a JSON array": (b"[1, 2, 3]", "unreadable run message"),
    "an unknown run id": (_json(_message()), "unknown run id 987654"),
    "a run id as text": (_json(_message(run_id="one")), "unreadable run message"),
    "a payload as a list": (_json(_message(payload=[1])), "unreadable run message"),
    "an attempt as a float": (_json(_message(attempt=1.5)), "unreadable run message"),
    "a run id past bigint": (_json(_message(run_id=2**70)), "unreadable run message"),
    "a negative attempt": (_json(_message(attempt=-3)), "unreadable run message"),
    "a timeout of NaN": (_json(_message()).replace(b'"timeout_s": 5', b'"timeout_s": NaN'), "unreadable run message"),
    "an infinite backoff": (_json(_message()).replace(b'"backoff": 1', b'"backoff": 1e999'), "unreadable run message"),
    "a scheduled time without a zone": (
        _json(_message(scheduled_time="2024-01-01T00:00:00")),
        "unreadable run message",
    ),
    "no version": (_json({k: v for k, v in _message().items() if k != "v"}), "unreadable run message"),
    "version 2": (_json(_message(v=2)), "unreadable run message"),
    # Held until due it would take a prefetch slot for decades.
    "a run due in 2100": (_json(_message(scheduled_time="2100-01-01T00:00:00Z")), "scheduled "),
}


@pytest.mark.slow
async def test_poison_messages_are_dead_lettered_and_the_processors_keep_running_good_runs(
    stack: Stack, db: asyncpg.Connection
) -> None:
    await stack.start(distributor=1, processor=2)
    before = [await new_task(db, f"before-{i}", "http", stack.target.payload(f"before-{i}")) for i in range(3)]
    for body, _ in POISON.values():
        await stack.broker.publish(body, "noop", message_id="forged")
    # A real run whose secrets were sealed with a key no processor holds: it cannot run anywhere.
    sealed = TaskCreate(name="wrong-key", type="noop", secrets={"TOKEN": "s3cret"}, max_retries=3)
    wrong_key = await create_task(db, sealed, secret_key=Fernet.generate_key().decode())
    after = [await new_task(db, f"after-{i}", "http", stack.target.payload(f"after-{i}")) for i in range(3)]

    await stack.quiesce()
    # Both processors are still consuming.
    assert (await stack.broker.depth(stack.broker.names.work_queue) or (0, 0))[1] == 2
    tasks = [t.id for t in (*before, wrong_key, *after)]
    report = await stack.check(dict.fromkeys(tasks, 1), poison=len(POISON))
    assert report.statuses == {"succeeded": 6, "dead": 1}
    dead_run = await stack.run_of(wrong_key.id)
    assert (dead_run["status"], dead_run["attempt"]) == ("dead", 1)  # no retry: no attempt could read it
    assert "cannot be decrypted" in dead_run["error"]

    letters = await stack.broker.take_dead()
    reasons = {m.body: str((m.headers or {}).get("x-taskmill-reason")) for m in letters}
    for name, (body, reason) in POISON.items():
        assert body in reasons, f"{name}: not in the dead-letter queue"
        assert reasons[body].startswith(reason), f"{name}: dead-lettered because {reasons[body]!r}"
    [wrong_key_letter] = [m for m in letters if m.body not in {body for body, _ in POISON.values()}]
    assert wrong_key_letter.message_id == str(dead_run["id"])
    assert json.loads(wrong_key_letter.body)["run_id"] == dead_run["id"]
    assert "s3cret" not in wrong_key_letter.body.decode()
