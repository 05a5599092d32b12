"""Secrets the roles hold: any secret setting may come from a file (`<VAR>_FILE`, as Docker and Kubernetes mount
them), an HS256 secret too short to sign with stops the API and `taskmill token`, and the task secret key may be a
list that `taskmill rotate-secrets` rotates to its first key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import jwt
import pytest
from cryptography.fernet import Fernet

from taskmill.models import TaskCreate
from taskmill.secrets import open_sealed
from taskmill.settings import Settings
from taskmill.store.tasks import create_task
from tests.helpers import free_port, taskmill

LONG = "a-secret-of-forty-bytes-for-hs256-tokens"


def test_a_secret_setting_can_come_from_a_file_its_trailing_newline_dropped(tmp_path: Path) -> None:
    secret = tmp_path / "jwt"
    secret.write_text(LONG + "\n")
    result = taskmill("token", "--sub", "ops", JWT_SECRET_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), LONG, algorithms=["HS256"])
    assert claims["sub"] == "ops"


def test_a_secret_file_given_beside_its_variable_or_unreadable_stops_with_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "jwt"
    secret.write_text(LONG)
    both = taskmill("token", "--sub", "ops", JWT_SECRET=LONG, JWT_SECRET_FILE=str(secret))
    assert (both.returncode, both.stderr.splitlines()) == (
        2,
        ["taskmill: bad setting: set JWT_SECRET or JWT_SECRET_FILE, not both"],
    )
    missing = taskmill("migrate", DATABASE_URL_FILE=str(tmp_path / "nowhere"))
    assert (missing.returncode, missing.stderr.splitlines()) == (
        2,
        [f"taskmill: bad setting: DATABASE_URL_FILE: cannot read {tmp_path / 'nowhere'}: No such file or directory"],
    )


def test_every_secret_setting_has_its_file_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_a, key_b = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    files = {
        "DATABASE_URL": "postgresql://taskmill:pw@db.example:5432/taskmill",
        "AMQP_URL": "amqps://taskmill:pw@mq.example:5671/",
        "JWT_SECRET": LONG,
        "JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        "TASKMILL_SECRET_KEY": f"{key_a},{key_b}",
    }
    for var, value in files.items():
        path = tmp_path / var
        path.write_text(value + "\n")
        monkeypatch.setenv(f"{var}_FILE", str(path))
    settings = Settings()
    assert (settings.database_url, settings.amqp_url) == (files["DATABASE_URL"], files["AMQP_URL"])
    assert (settings.jwt_secret, settings.jwt_public_key) == (files["JWT_SECRET"], files["JWT_PUBLIC_KEY"])
    assert settings.secret_key == files["TASKMILL_SECRET_KEY"]


@pytest.mark.parametrize("args", [["token", "--sub", "ops"], ["api"]])
def test_a_short_hs256_secret_stops_the_api_and_the_token_command_naming_jwt_secret(
    args: list[str], settings: Settings
) -> None:
    result = taskmill(
        *args, JWT_SECRET="s" * 31, DATABASE_URL=settings.database_url, TASKMILL_API_PORT=str(free_port())
    )
    line = (
        f"taskmill {args[0]}: JWT_SECRET is 31 bytes; HS256 needs at least 32 "
        "(make one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    )
    assert (result.returncode, result.stderr.splitlines()) == (2, [line]), result.stderr


async def test_rotate_secrets_reseals_every_task_with_the_first_key_and_names_what_no_key_opens(
    settings: Settings, db: asyncpg.Connection
) -> None:
    old, new, stranger = (Fernet.generate_key().decode() for _ in range(3))
    for i in range(3):
        spec = TaskCreate(name=f"t{i}", type="noop", secrets={"TOKEN": f"value-{i}"})
        await create_task(db, spec, secret_key=old)
    await create_task(db, TaskCreate(name="plain", type="noop"), secret_key=old)
    env = {"DATABASE_URL": settings.database_url, "TASKMILL_SECRET_KEY": f"{new},{old}"}

    result = await asyncio.to_thread(taskmill, "rotate-secrets", **env)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        "re-encrypted 3 tasks' secrets with the first key; 0 had it already",
    ), result.stderr
    for row in await db.fetch("SELECT name, secrets FROM tasks WHERE secrets IS NOT NULL ORDER BY name"):
        assert open_sealed(new, row["secrets"].decode()) == {"TOKEN": f"value-{row['name'][1]}"}  # new key alone

    again = await asyncio.to_thread(taskmill, "rotate-secrets", **env)
    assert again.stdout.strip() == "re-encrypted 0 tasks' secrets with the first key; 3 had it already"

    lost = await create_task(db, TaskCreate(name="lost", type="noop", secrets={"X": "y"}), secret_key=stranger)
    failed = await asyncio.to_thread(taskmill, "rotate-secrets", **env)
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [f"taskmill rotate-secrets: no key opens the secrets of 1 tasks: {lost.id}"]
