"""`taskmill` given settings that cannot work: one line on stderr naming the problem and a non-zero exit, never a
traceback (malformed URLs, a database, role or vhost that does not exist, an unknown connection option, a port
already taken)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from taskmill.settings import Settings
from tests import services
from tests.helpers import taskmill

NO_DATABASE = services.dsn("tmtest_no_such_database")


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, line: str) -> None:
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [line], result.stderr
    assert result.returncode == code


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "env", "code", "line"),
    [
        (
            ["scheduler"],
            {"DATABASE_URL": NO_DATABASE},
            1,
            'taskmill scheduler: PostgreSQL: database "tmtest_no_such_database" does not exist',
        ),
        (
            ["migrate"],
            {"DATABASE_URL": services.dsn("x", user="tm_no_such_role")},
            1,
            'taskmill migrate: PostgreSQL: role "tm_no_such_role" does not exist',
        ),
        (
            ["api"],
            {"DATABASE_URL": NO_DATABASE, "JWT_SECRET": "s" * 32},
            1,
            'taskmill api: PostgreSQL: database "tmtest_no_such_database" does not exist',
        ),
        (
            ["distributor"],
            {"DATABASE_URL": services.dsn("tmtest_no_such_database", sslmode="sometimes")},
            1,
            "taskmill distributor: PostgreSQL: `sslmode` parameter must be one of: disable, allow, prefer, require, "
            "verify-ca, verify-full",
        ),
        (
            ["scheduler"],
            {"DATABASE_URL": "postgresql://[::1/taskmill"},
            2,
            "taskmill: bad setting: DATABASE_URL: Value error, Invalid IPv6 URL",
        ),
        (
            ["distributor"],
            {"DATABASE_URL": "postgresql://postgres@/x?host=/run/postgresql&port=5432?sslmode=require"},
            2,
            "taskmill: bad setting: DATABASE_URL: Value error, port '5432?sslmode=require' in the query is not a "
            "number",
        ),
        (
            ["processor"],
            {"AMQP_URL": "amqp://guest:guest@127.0.0.1:99999/"},
            2,
            "taskmill: bad setting: AMQP_URL: Value error, Port out of range 0-65535",
        ),
        (
            ["processor"],
            {"AMQP_URL": "amqp://guest:guest@127.0.0.1:port/"},
            2,
            "taskmill: bad setting: AMQP_URL: Value error, Port could not be cast to integer value as 'port'",
        ),
    ],
)
def test_settings_a_service_refuses_stop_the_process_with_one_line(
    args: list[str], env: dict[str, str], code: int, line: str
) -> None:
    assert_one_line(taskmill(*args, **env), code, line)


def test_a_vhost_that_does_not_exist_stops_the_processor_with_one_line(settings: Settings) -> None:
    result = taskmill(
        "processor", DATABASE_URL=settings.database_url, AMQP_URL=settings.amqp_url.rstrip("/") + "/tm_no_such_vhost"
    )
    line = "RabbitMQ closed the connection as it opened: check the vhost and the user's rights in AMQP_URL"
    assert_one_line(result, 1, f"taskmill processor: {line}")


def test_a_metrics_port_in_use_stops_the_role_with_one_line(taken_port: int) -> None:
    result = taskmill("scheduler", TASKMILL_METRICS_PORT=str(taken_port))
    line = f"taskmill scheduler: cannot serve metrics on port {taken_port}: [Errno 98] Address already in use"
    assert_one_line(result, 2, line)


def test_an_api_port_in_use_stops_the_api_with_one_line(settings: Settings, taken_port: int) -> None:
    result = taskmill("api", DATABASE_URL=settings.database_url, JWT_SECRET="s" * 32, TASKMILL_API_PORT=str(taken_port))
    assert_one_line(result, 2, f"taskmill api: cannot listen on 127.0.0.1:{taken_port}: Address already in use")
