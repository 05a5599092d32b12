"""The run message on the broker: versioned JSON, readable by a processor written in any language.

Version 1 fields: v, run_id, task_id, type, payload (object), attempt (1 for the first try), scheduled_time
(ISO 8601), timeout_s, max_retries, retry_delay_s, backoff, deadline (ISO 8601: when the rescuer may hand the
run out again if it has not started), secrets (Fernet ciphertext or null), lost (earlier attempts of the run whose
processor was lost; 0 when absent), priority (0-9, higher first; 0 when absent), traceparent (the W3C trace
context the run's execution continues, when traces are on; absent otherwise), released_at (ISO 8601: when a run that
waited for others, a workflow step or a reduce, was released; absent for the others). The AMQP message id is the run
id.

The keys are the wire format, kept as first published so that messages already queued (a retry can wait a day in
a delay queue) and processors written elsewhere keep working. In Python the fields carry the names a task's own
fields have everywhere else (`timeout_seconds`, `retry_delay_seconds`); the two short keys are their aliases.

Version 2 carries several runs of one task type in one message: `{"v": 2, "runs": [<version 1 message>, ...]}`,
AMQP message id the first run's id, header `x-taskmill-runs` their number. The distributor coalesces runs so when
many fall due together (a message costs the broker, the publisher and the consumer about as much as the runs in it
cost the processor); a retry, a rescued run and a dead letter are version 1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import aio_pika
from aiormq import spec
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

VERSION = 1
CONTENT_TYPE = "application/json"
# The ranges of the database columns (bigint ids, integer counts): a value outside them is a poison message,
# dead-lettered when read, not a query that fails each time the processor tries to start the run.
_BIGINT = 2**63 - 1
_INTEGER = 2**31 - 1
# The longest wait between two attempts: a day, the most a task may ask as its first delay.
MAX_RETRY_DELAY_S = 86_400.0


class RunMessage(BaseModel):
    model_config = ConfigDict(
        extra="ignore", frozen=True, allow_inf_nan=False, validate_by_name=True, serialize_by_alias=True
    )
    v: Literal[1]
    run_id: int = Field(ge=1, le=_BIGINT)
    task_id: int = Field(ge=1, le=_BIGINT)
    type: str
    payload: dict[str, Any]
    attempt: int = Field(ge=1, le=_INTEGER)
    scheduled_time: AwareDatetime
    timeout_seconds: float = Field(gt=0, alias="timeout_s")
    max_retries: int = Field(ge=0, le=_INTEGER)
    retry_delay_seconds: float = Field(ge=0, alias="retry_delay_s")
    backoff: float = Field(ge=1)
    deadline: AwareDatetime | None = None
    secrets: str | None = None  # Fernet ciphertext of the task's secrets (taskmill/secrets.py)
    lost: int = Field(0, ge=0, le=_INTEGER)
    priority: int = Field(0, ge=0, le=9)  # higher passes a backlog; 0 when absent (a message of an older version)
    traceparent: str | None = Field(None, max_length=256)  # W3C trace context of the publish (taskmill/tracing.py)
    released_at: AwareDatetime | None = None  # when its dependencies released it (a workflow step, a reduce)

    def due_at(self) -> datetime:
        """When the run became due: its time, or its release when it waited for other runs past that."""
        if self.released_at is None:
            return self.scheduled_time
        return max(self.scheduled_time, self.released_at)

    def retry_delay_ms(self) -> int:
        """The wait before the next attempt: retry_delay * backoff^(attempt - 1), at most MAX_RETRY_DELAY_S (an
        exponential backoff soon asks for more than the broker takes as a queue TTL, or than a float holds)."""
        try:
            seconds = min(MAX_RETRY_DELAY_S, self.retry_delay_seconds * self.backoff ** (self.attempt - 1))
        except OverflowError:
            seconds = MAX_RETRY_DELAY_S
        return max(1, round(1000 * seconds))

    def next_attempt(self) -> bytes:
        return self.model_copy(update={"attempt": self.attempt + 1, "deadline": None}).wire()

    def wire(self) -> bytes:
        """The message as it goes on the broker (the version 1 keys)."""
        return self.model_dump_json().encode()


class RunBatch(BaseModel):
    """Version 2: runs of one type, coalesced into one message."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    v: Literal[2]
    runs: list[RunMessage] = Field(min_length=1, max_length=10_000)


# One parse of the JSON whatever its version, `v` telling which shape to read.
_DELIVERY: TypeAdapter[RunMessage | RunBatch] = TypeAdapter(Annotated[RunMessage | RunBatch, Field(discriminator="v")])


def read_runs(body: bytes) -> list[RunMessage]:
    """The runs a message carries, one (version 1) or several (version 2); ValidationError when it is neither."""
    read = _DELIVERY.validate_json(body)
    return [read] if isinstance(read, RunMessage) else read.runs


def route_of(body: bytes) -> tuple[str, int] | None:
    """The type and priority of the runs a message carries (a version 2 message's: its first run's, as every run
    in it has them), read without validating the rest; None when the body does not say."""
    try:
        read = json.loads(body)
        first = read["runs"][0] if read.get("v") == 2 else read
        task_type, priority = first["type"], first.get("priority", 0)
    except (ValueError, LookupError, TypeError, AttributeError):
        return None
    if not isinstance(task_type, str) or type(priority) is not int or not 0 <= priority <= 9:
        return None
    return task_type, priority


def with_traceparent(body: bytes, traceparent: str) -> bytes:
    """A version 1 body (a JSON object, as run_message builds it) with `traceparent` added: no parse, no dump."""
    return body[: body.rindex(b"}")] + b',"traceparent":' + json.dumps(traceparent).encode() + b"}"


def batch_body(bodies: Sequence[bytes]) -> bytes:
    """A version 2 message of version 1 bodies, which go in as they are (they are JSON already)."""
    return b'{"v":2,"runs":[' + b",".join(bodies) + b"]}"


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
