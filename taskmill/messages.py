"""The run message on the broker: versioned JSON, readable by a processor written in any language.

Version 1 fields: v, run_id, task_id, type, payload (object), attempt (1 for the first try), scheduled_time
(ISO 8601), timeout_s, max_retries, retry_delay_s, backoff, deadline (ISO 8601: when the rescuer may hand the
run out again if it has not started), secrets (Fernet ciphertext or null). The AMQP message id is the run id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import aio_pika
from aiormq import spec
from pydantic import BaseModel, ConfigDict

VERSION = 1
CONTENT_TYPE = "application/json"


class RunMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: Literal[1]
    run_id: int
    task_id: int
    type: str
    payload: dict[str, Any]
    attempt: int
    scheduled_time: datetime
    timeout_s: float
    max_retries: int
    retry_delay_s: float
    backoff: float
    deadline: datetime | None = None
    secrets: str | None = None  # Fernet ciphertext of the task's secrets (taskmill/secrets.py)

    def retry_delay_ms(self) -> int:
        """The wait before the next attempt: retry_delay * backoff^(attempt - 1)."""
        return max(1, round(1000 * self.retry_delay_s * self.backoff ** (self.attempt - 1)))

    def next_attempt(self) -> bytes:
        return self.model_copy(update={"attempt": self.attempt + 1, "deadline": None}).model_dump_json().encode()


def properties(run_id: int, headers: dict[str, Any] | None = None) -> spec.Basic.Properties:
    """Persistent, JSON, message id = run id: what every run message carries."""
    return spec.Basic.Properties(
        content_type=CONTENT_TYPE, delivery_mode=2, message_id=str(run_id), headers=headers or {}
    )


def amqp_message(body: bytes, run_id: int, *, headers: dict[str, Any] | None = None) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        message_id=str(run_id),
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers or {},
    )
