"""`taskmill <command>`: one entry for every role. Roles are imported lazily, so the shared package never
imports a role and a process loads only the role it runs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aiormq
import asyncpg
import uvloop
from pydantic import ValidationError

from taskmill import logs, metrics, tracing
from taskmill.settings import ConfigError, Settings, format_settings_error

log = logging.getLogger(__name__)

ROLES = {
    "scheduler": "scheduler.service:run",
    "distributor": "distributor.service:run",
    "processor": "processor.service:run",
    "api": "api.service:run",
    "capacity": "capacity.service:run",
}

RoleRun = Callable[..., Coroutine[Any, Any, None]]


def load_role(name: str) -> RoleRun:
    module, _, attr = ROLES[name].partition(":")
    fn: RoleRun = getattr(importlib.import_module(module), attr)
    return fn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskmill", description="A distributed task scheduler.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("migrate", help="create the database if missing and apply migrations")
    sub.add_parser("scheduler", help="materialize runs of recurring tasks")
    sub.add_parser("distributor", help="hand due runs to the processors (RabbitMQ or PostgreSQL) and rescue stale ones")
    proc = sub.add_parser("processor", help="consume and execute runs")
    proc.add_argument("--concurrency", type=int, help="runs executed at once (default 10)")
    proc.add_argument(
        "--types",
        help="serve only these task types, comma-separated, `billing.*` patterns allowed (TASKMILL_TYPES); "
        "default: every type",
    )
    _import_option(proc)
    api = sub.add_parser("api", help="serve the REST API")
    api.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    api.add_argument("--port", type=int, help="port to listen on (default 8000)")
    cap = sub.add_parser("capacity", help="forecast the processors needed for the next hours, and ask for them")
    hook = cap.add_mutually_exclusive_group()
    hook.add_argument(
        "--hook-command",
        help="run this with {instances} replaced by the count, e.g. "
        "'kubectl scale deployment/processor --replicas={instances}' (no shell)",
    )
    hook.add_argument("--hook-url", help='POST the count as JSON here: {"instances": n, ...}')
    cap.add_argument("--min-instances", type=int, help="never ask for fewer (default 1)")
    cap.add_argument("--max-instances", type=int, help="never ask for more (default 100)")
    cap.add_argument("--cooldown", type=float, help="seconds after a change before scaling down (default 300)")
    dev = sub.add_parser(
        "dev", help="every role in one process, migrated, over an embedded PostgreSQL unless DATABASE_URL is set"
    )
    dev.add_argument("--host", help="API address (default 127.0.0.1)")
    dev.add_argument("--port", type=int, help="API port (default 8000)")
    dev.add_argument("--concurrency", type=int, help="processor concurrency (default 10)")
    _import_option(dev)
    dev.add_argument(
        "--data-dir",
        help="the embedded PostgreSQL's data, used when DATABASE_URL is not set (TASKMILL_DATA_DIR; default "
        "$XDG_STATE_HOME/taskmill/postgres, for root /var/lib/taskmill/postgres)",
    )
    sub.add_parser(
        "rotate-secrets", help="encrypt every task's secrets again with the first key of TASKMILL_SECRET_KEY"
    )
    token = sub.add_parser("token", help="print a JWT signed with JWT_SECRET, for development and scripts")
    token.add_argument("--sub", required=True, help="the subject (stored as the creator of what it creates)")
    token.add_argument("--scope", default="tasks:read tasks:write", help="space-separated scopes")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    for name, what in (("logs", "a task's latest runs and their output"), ("audit", "a task's status history")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("task", help="the task's name")
        cmd.add_argument("--runs", type=int, default=5 if name == "logs" else 20, help="how many latest runs")
        _api_options(cmd, "tasks:read")
    apply = sub.add_parser("apply", help="create or update tasks and workflows from YAML files, by name")
    apply.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="FILE|DIR",
                       help="a YAML file, or a directory of them (repeatable)")  # fmt: skip
    apply.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    apply.add_argument("--prune", action="store_true", help="delete the tasks and workflows the files do not name")
    _api_options(apply, "tasks:write (and tasks:command for command tasks)")
    get = sub.add_parser("get", help="write tasks or workflows in the format `taskmill apply` takes")
    get.add_argument("what", choices=["tasks", "workflows"])
    get.add_argument("name", nargs="?", help="one of them, by name")
    get.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    _api_options(get, "tasks:read")
    for role in (*ROLES, "dev"):
        sub.choices[role].add_argument(
            "--metrics-port", type=int, help="serve Prometheus metrics on this port (TASKMILL_METRICS_PORT)"
        )
    return parser


def _api_options(cmd: argparse.ArgumentParser, scope: str) -> None:
    cmd.add_argument(
        "--api",
        default=os.environ.get("TASKMILL_API", "http://127.0.0.1:8000"),
        help="the API's base URL (TASKMILL_API)",
    )
    cmd.add_argument(
        "--token",
        default=os.environ.get("TASKMILL_TOKEN", ""),
        help=f"a bearer token with {scope} (TASKMILL_TOKEN)",
    )


def _import_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="a module of Python handlers to serve (repeatable; TASKMILL_IMPORTS, comma-separated, adds to it)",
    )


def _inspect(args: argparse.Namespace) -> int:
    import httpx

    from taskmill.inspect import InspectError, audit, logs

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=args.api, headers=headers, timeout=10) as client:
        try:
            print((logs if args.command == "logs" else audit)(client, args.task, args.runs))
        except InspectError as exc:
            print(f"taskmill {args.command}: {exc}", file=sys.stderr)
            return 1
    return 0


def _declare(args: argparse.Namespace) -> int:
    """`taskmill apply` and `taskmill get`, over the REST API."""
    from pathlib import Path

    import httpx

    from taskmill.declare import Api, DeclareError, apply, get, load

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        if args.command == "apply":
            docs = load([Path(f) for f in args.files])
        with httpx.Client(base_url=args.api, headers=headers, timeout=30) as client:
            if args.command == "get":
                print(get(Api(client), args.what, args.name, args.output), end="")
                return 0
            for line in apply(Api(client), docs, dry_run=args.dry_run, prune=args.prune):
                print(line)
    except DeclareError as exc:
        print(f"taskmill {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for arg, field in (
        ("concurrency", "concurrency"),
        ("types", "types"),
        ("host", "api_host"),
        ("port", "api_port"),
        ("hook_command", "capacity_hook_command"),
        ("hook_url", "capacity_hook_url"),
        ("min_instances", "capacity_min_instances"),
        ("max_instances", "capacity_max_instances"),
        ("cooldown", "capacity_cooldown_s"),
        ("metrics_port", "metrics_port"),
    ):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field] = value
    settings = Settings(**overrides)
    if imports := getattr(args, "imports", None):
        settings = settings.model_copy(update={"imports": ",".join([*settings.import_list, *imports])})
    return settings


async def _until_signal(work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await work(stop)


async def _dev(settings: Settings, stop: asyncio.Event) -> None:
    from taskmill.loops import run_loops
    from taskmill.migrate import migrate

    await migrate(settings.database_url, settings.partition_days_ahead)
    if not (settings.jwt_secret or settings.jwt_public_key):
        # A secret for this session only, and a token to try the API with.
        settings = settings.model_copy(update={"jwt_secret": secrets.token_urlsafe(32)})
    print(
        f"taskmill dev: dashboard and API on http://{settings.api_host}:{settings.api_port}/ (docs at /docs)",
        flush=True,
    )
    if settings.jwt_secret:
        from taskmill.tokens import mint

        print(f"taskmill dev: token: {mint(settings.jwt_secret, 'dev', 'admin', 12 * 3600)}", flush=True)
    await run_loops(stop, **{name: load_role(name)(settings, stop=stop) for name in ROLES})


async def _rotate(settings: Settings) -> int:
    from taskmill.db import connect
    from taskmill.rotation import rotate_secrets

    if not settings.secret_key:
        raise ConfigError("set TASKMILL_SECRET_KEY: the keys to rotate, the new one first")
    conn = await connect(settings.database_url)
    try:
        done = await rotate_secrets(conn, settings.secret_key)
    finally:
        await conn.close()
    print(
        f"re-encrypted {done.resealed} tasks' secrets with the first key; {done.current} had it already"
        + (
            f"; {done.changed_meanwhile} were edited meanwhile (sealed with it by the API)"
            if done.changed_meanwhile
            else ""
        )
    )
    if done.unreadable:
        shown = ", ".join(map(str, done.unreadable[:20])) + (" ..." if len(done.unreadable) > 20 else "")
        print(
            f"taskmill rotate-secrets: no key opens the secrets of {len(done.unreadable)} tasks: {shown}",
            file=sys.stderr,
        )
        return 1
    return 0


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    # uvloop: the event loop, socket writes and timers in C; roughly halves the CPU a run costs the roles.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _service_error(exc: Exception) -> str:
    if isinstance(exc, aiormq.exceptions.AMQPError):
        if isinstance(exc, aiormq.exceptions.ProtocolSyntaxError):
            # aiormq drops the broker's reason when it closes the connection during the handshake.
            return "RabbitMQ closed the connection as it opened: check the vhost and the user's rights in AMQP_URL"
        return f"RabbitMQ: {exc}"
    return f"PostgreSQL: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("logs", "audit"):
        return _inspect(args)
    if args.command in ("apply", "get"):
        return _declare(args)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"taskmill: {format_settings_error(exc)}", file=sys.stderr)
        return 2
    except ConfigError as exc:  # a secret file that cannot be read, or given twice
        print(f"taskmill: bad setting: {exc}", file=sys.stderr)
        return 2
    role = args.command if args.command in (*ROLES, "dev") else None
    logs.configure(settings.log_level, settings.log_format, role)
    if role is not None:
        metrics.ROLE_INFO.labels(role).set(1)
        tracing.configure(role)
    try:
        if args.command not in ("migrate", "token"):
            metrics.serve(settings.metrics_port)
    except OSError as exc:
        print(f"taskmill {args.command}: cannot serve metrics on port {settings.metrics_port}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "token":
            # Only here and in `dev`: PyJWT and cryptography's X.509 cost every role process 45 ms of CPU to import.
            from taskmill.tokens import check_hs256_secret, mint

            if not settings.jwt_secret:
                print("taskmill token: set JWT_SECRET (the HS256 secret the API verifies with)", file=sys.stderr)
                return 2
            check_hs256_secret(settings.jwt_secret)
            print(mint(settings.jwt_secret, args.sub, args.scope, args.ttl, settings.jwt_issuer, settings.jwt_audience))
            return 0
        if args.command == "rotate-secrets":
            code: int = _run(_rotate(settings))
            return code
        if args.command == "migrate":
            from taskmill.migrate import migrate

            applied = _run(migrate(settings.database_url, settings.partition_days_ahead))
            print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
        elif args.command == "dev":
            from taskmill import devserver

            try:
                devserver.check_port_free(settings.api_host, settings.api_port)
                if "database_url" in settings.model_fields_set:
                    _run(_until_signal(lambda stop: _dev(settings, stop)))
                else:
                    # An embedded PostgreSQL of its own. SIGTERM, like SIGINT, unwinds through the block that stops
                    # it (while the event loop runs, both stop the roles gracefully instead).
                    signal.signal(signal.SIGTERM, signal.default_int_handler)
                    data_dir = devserver.data_dir_from(args.data_dir, os.environ, os.geteuid())
                    with devserver.embedded_postgres(data_dir) as server:
                        print(server.describe(), flush=True)
                        embedded = settings.model_copy(update={"database_url": server.dsn})
                        _run(_until_signal(lambda stop: _dev(embedded, stop)))
            except devserver.DevServerError as exc:
                print(f"taskmill dev: {exc}", file=sys.stderr)
                return 2
        else:
            if args.command == "processor" and settings.jwt_secret:
                # Each role holds only what it needs: with it, a task that reads this process could mint tokens.
                log.warning("JWT_SECRET is set for a processor, which never needs it: remove it from its environment")
            run_role = load_role(args.command)
            _run(_until_signal(lambda stop: run_role(settings, stop=stop)))
    except ConfigError as exc:
        print(f"taskmill {args.command}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"taskmill {args.command}: cannot reach a service: {exc}", file=sys.stderr)
        return 1
    except (asyncpg.PostgresError, asyncpg.InterfaceError, aiormq.exceptions.AMQPError) as exc:
        # A service that answers but refuses what the settings ask (no such database, role or vhost, an unknown
        # connection option): one line naming it; the traceback only at DEBUG.
        log.debug("stopped by a service error", exc_info=True)
        print(f"taskmill {args.command}: {_service_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Not a service refusing, not a setting: a bug. The role stops and says so, for its supervisor to restart it
        # and its operator to read (the traceback goes to the log).
        log.error("stopped by an unexpected error", exc_info=True, extra={"action": "stop"})
        print(f"taskmill {args.command}: stopped by {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # the spans still buffered
    return 0


if __name__ == "__main__":
    sys.exit(main())
