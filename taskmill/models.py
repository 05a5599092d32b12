"""The domain model: pydantic shapes at the edges (what callers send), frozen rows inside."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from taskmill.cron import ScheduleError, shortest_gap_s, validate_cron, zone
from taskmill.states import ScheduleKind
from taskmill.tasktypes import BUILTIN

# A Python handler's name (taskmill/handlers.py NAME).
HANDLER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,199}$")

# A run's timeout when its task names none, and the most any setting may allow (a run longer than RabbitMQ's
# consumer_timeout, 30 min by default, needs that raised too).
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_CAP_S = 86_400.0
# How far in the past a one-off `at` may be and still be accepted (it then runs at once).
AT_GRACE = timedelta(seconds=60)
# A task's secrets: names as environment variables take them, values write-only.
SecretMap = dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], SecretStr]


def _in_range(value: datetime) -> datetime:
    # An offset can carry a wall time of year 9999 past the end of the calendar in UTC, where it cannot be stored.
    try:
        value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("is out of range: in UTC it falls outside the years 1 to 9999") from None
    return value


# A point in time the database can hold (a request's datetime fields and query parameters).
Instant = Annotated[datetime, AfterValidator(_in_range)]


def _printable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a name cannot contain NUL")
    return value


# A task's, a workflow's or a step's name.
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]


def json_fault(value: Any, path: str = "") -> str | None:
    """Why PostgreSQL's jsonb would refuse `value` (NUL, an unpaired surrogate, NaN or Infinity), or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path or '(value)'}: a string cannot contain NUL (\\u0000)"
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"{path or '(value)'}: a string cannot contain an unpaired surrogate"
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{path or '(value)'}: NaN and Infinity are not JSON numbers"
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if fault := json_fault(key, where + " (key)") or json_fault(item, where):
                return fault
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if fault := json_fault(item, f"{path}[{i}]"):
                return fault
    return None


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: ScheduleKind = ScheduleKind.IMMEDIATE
    at: Instant | None = None
    cron: str | None = Field(None, max_length=256)
    every_seconds: int | None = Field(None, ge=1, le=366 * 86400)
    timezone: str = Field("UTC", max_length=64)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zone(value)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a timezone offset, e.g. 2026-01-01T09:00:00Z")
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                validate_cron(value)
            except ScheduleError as exc:
                raise ValueError(str(exc)) from None
        return value

    def late(self, now: datetime) -> str | None:
        """Why this schedule cannot be saved at `now` (a one-off time past by more than the grace), or None."""
        if self.kind is ScheduleKind.ONCE and self.at is not None and self.at < now - AT_GRACE:
            return f"is more than {AT_GRACE.seconds} s in the past"
        return None

    @model_validator(mode="after")
    def _fields_match_kind(self) -> Schedule:
        needed = {ScheduleKind.ONCE: "at", ScheduleKind.CRON: "cron", ScheduleKind.INTERVAL: "every_seconds"}
        field = needed.get(self.kind)
        if field and getattr(self, field) is None:
            raise ValueError(f"a {self.kind} schedule needs `{field}`")
        return self


class TaskBody(BaseModel):
    """What a run of a task does and how it is retried: a task of its own and a workflow's step share it."""

    model_config = ConfigDict(extra="forbid")
    name: Name
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    max_retries: int = Field(0, ge=0, le=100)
    retry_delay_seconds: float = Field(10.0, ge=0, le=86400)
    backoff: float = Field(1.0, ge=1, le=10)
    # The API holds it to TASKMILL_MAX_TIMEOUT_S (and gives a task that names none the smaller of 30 s and that);
    # a processor cuts every run at its own setting.
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_CAP_S)
    estimated_ms: int = Field(1000, ge=0, le=86_400_000)
    # 0-9, higher first: an urgent run passes a backlog (README "Priorities").
    priority: int = Field(0, ge=0, le=9)
    # Values are write-only: stored encrypted, shown by name only, masked in every repr and log line.
    secrets: SecretMap = Field(default_factory=dict, max_length=50)

    def secret_values(self) -> dict[str, str]:
        return {name: value.get_secret_value() for name, value in self.secrets.items()}

    @field_validator("secrets")
    @classmethod
    def _storable(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if "\x00" in secret.get_secret_value() or len(secret.get_secret_value()) > 4096:
                raise ValueError(f"secret {name!r} must be at most 4096 characters, without NUL")
        return value

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        # A built-in type, or the name of a Python handler (which the API checks against those registered).
        if value not in BUILTIN and not HANDLER_NAME.match(value):
            raise ValueError(
                f"unknown task type {value!r}; known: {', '.join(sorted(BUILTIN))}, or a Python handler's name"
            )
        return value

    @field_validator("payload")
    @classmethod
    def _storable_payload(cls, value: dict[str, Any]) -> dict[str, Any]:
        if fault := json_fault(value):
            raise ValueError(f"cannot be stored: {fault}")
        return value

    @field_validator("payload")
    @classmethod
    def _payload_fits_type(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        tasktype = BUILTIN.get(info.data.get("type", ""))
        if tasktype is not None:
            try:
                tasktype.parse(value)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '(payload)'}: {e['msg']}" for e in exc.errors()
                )
                raise ValueError(f"does not fit type {tasktype.name}: {problems}") from None
        return value


class TaskCreate(TaskBody):
    schedule: Schedule = Field(default_factory=Schedule)
    active: bool = True
    # What happens to an occurrence that could not start within `misfire_grace_seconds` of its time (README
    # "Missed runs"), and the window an occurrence is placed in to spread a crowd of tasks at one time.
    misfire: Literal["skip", "once", "all"] = "once"
    misfire_grace_seconds: int = Field(60, ge=1, le=31_622_400)
    catchup_window_seconds: int = Field(86_400, ge=0, le=31_622_400)
    window_seconds: int = Field(0, ge=0, le=86_400)
    # An occurrence falling due while the task's previous run is in flight (README "Overlaps").
    overlap: Literal["allow", "skip", "queue_one", "cancel_previous"] = "allow"
    # At most this many runs in flight at once across every processor, counted per concurrency_key (the task's own
    # when none is given: several tasks naming one key share the count, each held to its own cap).
    max_concurrency: int | None = Field(None, ge=1, le=100_000)
    concurrency_key: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^\x00]*$")

    @model_validator(mode="after")
    def _key_has_a_cap(self) -> TaskCreate:
        if self.concurrency_key is not None and self.max_concurrency is None:
            raise ValueError("concurrency_key: give max_concurrency too (the cap the key's runs are held to)")
        return self

    @model_validator(mode="after")
    def _window_fits_schedule(self) -> TaskCreate:
        kind = self.schedule.kind
        if self.window_seconds and kind not in (ScheduleKind.CRON, ScheduleKind.INTERVAL):
            raise ValueError("window_seconds: only a cron or interval schedule is spread over a window")
        every = self.schedule.every_seconds
        if self.window_seconds and kind is ScheduleKind.INTERVAL and every is not None and self.window_seconds > every:
            raise ValueError(f"window_seconds: at most the interval ({every} s), or occurrences would change order")
        cron = self.schedule.cron
        # Past 60 s (a second for six fields) a window may be wider than the gaps between a cron's firings: two
        # occurrences would then change order or be placed at one instant, where the second would be lost.
        if self.window_seconds > 1 and kind is ScheduleKind.CRON and cron is not None:
            gap = shortest_gap_s(cron, self.schedule.timezone)
            if gap is not None and self.window_seconds > gap:
                raise ValueError(
                    f"window_seconds: at most the shortest gap between the schedule's occurrences ({gap:g} s), or "
                    "occurrences would change order or fall at one instant"
                )
        return self


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    name: str
    type: str
    payload: dict[str, Any]
    schedule_kind: ScheduleKind
    cron: str | None
    every_seconds: int | None
    run_at: datetime | None
    timezone: str
    active: bool
    max_retries: int
    retry_delay_seconds: float
    backoff: float
    timeout_seconds: float
    estimated_ms: int
    created_by: str | None
    created_at: datetime
    schedule_from: datetime
    secret_names: list[str]
    workflow_id: int | None = None  # a workflow's step: edited through its workflow
    misfire: str = "once"
    misfire_grace_seconds: int = 60
    catchup_window_seconds: int = 86_400
    window_seconds: int = 0
    overlap: str = "allow"
    max_concurrency: int | None = None
    concurrency_key: str | None = None
    priority: int = 0
    # Where it came from (migration 0017): `api`, or the one-off row of one run made by defer, submit or spawn.
    origin: str = "api"
    # A one-off (once or immediate) whose runs have all ended; read by GET_TASK and the listing only.
    completed: bool = False

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Task:
        present = set(r.keys())
        values = {name: r[name] for name in cls.__slots__ if name in present}
        values["schedule_kind"] = ScheduleKind(values["schedule_kind"])
        return cls(**values)
