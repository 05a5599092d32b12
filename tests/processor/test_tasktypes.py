"""Each built-in task type, run for real: distributor to broker to processor, then read back from the database."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

import distributor.service
import processor.service
from taskmill.models import TaskCreate
from taskmill.settings import Settings
from taskmill.store.tasks import create_task
from taskmill.tasktypes import command
from tests.helpers import new_task, running, wait_for_statuses, wait_until
from tests.processor.http_targets import Target


async def run_pipeline(
    settings: Settings, db: asyncpg.Connection, expected: dict[str, int], timeout: float = 10
) -> None:
    """Publishes every due run and lets a processor work until the runs reach the `expected` statuses."""
    async with running(processor.service.run, settings):
        await distributor.service.run(settings, until_idle=True)
        await wait_for_statuses(db, expected, timeout=timeout)


async def only_result(db: asyncpg.Connection, task_id: int) -> asyncpg.Record:
    """The single attempt recorded for the task's run, with the run's own status and error."""
    rows = await db.fetch(
        """SELECT s.status::text AS run_status, s.attempt AS run_attempt, s.error AS run_error,
                  r.attempt, r.status::text, r.result, r.error, r.duration_ms
           FROM task_schedule s JOIN task_results r ON r.run_id = s.id WHERE s.task_id = $1""",
        task_id,
    )
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL on a port that is bound but not listening, so a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


def gone(pid: int) -> bool:
    """True when the process no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_noop_returns_its_payload_as_the_result(settings: Settings, db: asyncpg.Connection) -> None:
    payload: dict[str, Any] = {"answer": 42, "nested": {"list": [1, "two", None]}}
    task = await new_task(db, "noop", "noop", payload)
    await run_pipeline(settings, db, {"succeeded": 1})
    row = await only_result(db, task.id)
    assert (row["run_attempt"], row["attempt"], row["status"]) == (1, 1, "succeeded")
    assert row["result"] == payload
    assert row["error"] is None


async def test_a_short_sleep_succeeds_after_sleeping(settings: Settings, db: asyncpg.Connection) -> None:
    task = await new_task(db, "nap", "sleep", {"ms": 50})
    await run_pipeline(settings, db, {"succeeded": 1})
    row = await only_result(db, task.id)
    assert row["result"] == {"slept_ms": 50}
    assert row["duration_ms"] >= 50


async def test_a_sleep_longer_than_its_timeout_fails_with_a_timeout(settings: Settings, db: asyncpg.Connection) -> None:
    task = await new_task(db, "long nap", "sleep", {"ms": 10_000}, timeout_seconds=0.3)
    await run_pipeline(settings, db, {"failed": 1})
    row = await only_result(db, task.id)
    assert row["status"] == "failed"
    assert row["error"] == row["run_error"] == "timed out after 0.3 s"
    assert row["result"] is None
    assert 300 <= row["duration_ms"] < 5000


async def test_http_succeeds_on_200_with_status_and_body_in_the_result(
    settings: Settings, db: asyncpg.Connection, target: Target
) -> None:
    task = await new_task(db, "hook", "http", {"url": target.url("/hook")})
    await run_pipeline(settings, db, {"succeeded": 1})
    row = await only_result(db, task.id)
    assert row["result"] == {
        "status": 200,
        "body": "hello from the target",
        "body_bytes": 21,
        "complete": True,
        "truncated": False,
    }
    assert [r["request"] for r in target.requests] == ["GET /hook HTTP/1.1"]


async def test_http_sends_the_run_id_as_idempotency_key(
    settings: Settings, db: asyncpg.Connection, target: Target
) -> None:
    task = await new_task(db, "hook", "http", {"url": target.url("/hook"), "method": "POST", "json": {"a": 1}})
    await run_pipeline(settings, db, {"succeeded": 1})
    run_id = await db.fetchval("SELECT id FROM task_schedule WHERE task_id = $1", task.id)
    assert len(target.requests) == 1
    assert target.requests[0]["idempotency-key"] == str(run_id)
    assert target.requests[0]["request"] == "POST /hook HTTP/1.1"


async def test_http_fails_on_500_and_keeps_the_status(
    settings: Settings, db: asyncpg.Connection, target: Target
) -> None:
    target.status, target.body = 500, b"boom"
    task = await new_task(db, "hook", "http", {"url": target.url("/hook")})
    await run_pipeline(settings, db, {"failed": 1})
    row = await only_result(db, task.id)
    assert row["error"] == "unexpected HTTP status 500"
    assert row["result"] == {"status": 500, "body": "boom", "body_bytes": 4, "complete": True, "truncated": False}


async def test_http_fails_cleanly_when_the_connection_is_refused(
    settings: Settings, db: asyncpg.Connection, refused_url: str
) -> None:
    task = await new_task(db, "hook", "http", {"url": refused_url})
    await run_pipeline(settings, db, {"failed": 1})
    row = await only_result(db, task.id)
    assert row["error"].startswith("ConnectError: ")
    assert len(row["error"]) > len("ConnectError: ")
    assert row["result"] is None


async def test_command_captures_stdout_and_stderr(settings: Settings, db: asyncpg.Connection) -> None:
    task = await new_task(db, "echo", "command", {"argv": ["sh", "-c", "echo out; echo err >&2"]})
    await run_pipeline(settings, db, {"succeeded": 1})
    row = await only_result(db, task.id)
    assert row["result"] == {
        "exit_code": 0,
        "stdout": "out\n",
        "stderr": "err\n",
        "stdout_bytes": 4,
        "stderr_bytes": 4,
        "truncated": False,
    }


async def test_command_fails_on_a_non_zero_exit_with_the_exit_code_in_the_result(
    settings: Settings, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "exit", "command", {"argv": ["sh", "-c", "echo bad news >&2; exit 3"]})
    await run_pipeline(settings, db, {"failed": 1})
    row = await only_result(db, task.id)
    assert row["error"] == row["run_error"] == "exit code 3"
    assert row["result"]["exit_code"] == 3
    assert row["result"]["stderr"] == "bad news\n"


async def test_command_output_is_capped_at_output_cap_bytes(settings: Settings, db: asyncpg.Connection) -> None:
    capped = settings.model_copy(update={"output_cap_bytes": 256})
    task = await new_task(db, "chatty", "command", {"argv": ["sh", "-c", "printf '%05000d' 0; printf '%0300d' 0 >&2"]})
    await run_pipeline(capped, db, {"succeeded": 1})
    result = (await only_result(db, task.id))["result"]
    assert result["stdout"] == "0" * 256
    assert result["stderr"] == "0" * 256
    assert (result["stdout_bytes"], result["stderr_bytes"], result["truncated"]) == (5000, 300, True)


async def test_command_gets_env_and_cwd_from_its_payload_and_not_the_processor_env(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKMILL_TEST_LEAK", "processor secret")
    script = 'printf "%s|%s|%s" "$GREETING" "${TASKMILL_TEST_LEAK-unset}" "$(pwd -P)"'
    payload = {"argv": ["sh", "-c", script], "env": {"GREETING": "hello"}, "cwd": str(tmp_path)}
    task = await new_task(db, "env", "command", payload)
    await run_pipeline(settings, db, {"succeeded": 1})
    result = (await only_result(db, task.id))["result"]
    assert result["stdout"] == f"hello|unset|{os.path.realpath(tmp_path)}"


async def test_a_timed_out_command_loses_its_whole_process_group(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    script = 'sleep 30 & a=$!; sleep 30 & b=$!; echo "$$ $a $b" > pids.tmp; mv pids.tmp pids; wait'
    task = await new_task(
        db, "stuck", "command", {"argv": ["sh", "-c", script], "cwd": str(tmp_path)}, timeout_seconds=1
    )
    await run_pipeline(settings, db, {"failed": 1})
    row = await only_result(db, task.id)
    assert row["error"] == "timed out after 1 s"
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 3

    async def all_gone() -> bool:
        return all(gone(pid) for pid in pids)

    await wait_until(all_gone, timeout=2, what=f"pids {pids} to be killed")


async def test_a_timed_out_command_keeps_its_output_when_killing_it_takes_a_while(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a loaded machine the kill, the pipes' drain and the reading took longer than the 50 ms the command used to
    # have between its own deadline and the processor's cancellation: the run failed with no output at all.
    kill = command._kill_group

    def slow_kill(pid: int) -> None:
        time.sleep(0.2)
        kill(pid)

    monkeypatch.setattr(command, "_kill_group", slow_kill)
    task = await new_task(
        db, "talks-then-hangs", "command", {"argv": ["sh", "-c", "echo started; exec sleep 30"]}, timeout_seconds=1
    )
    await run_pipeline(settings, db, {"failed": 1})
    row = await only_result(db, task.id)
    assert row["error"] == "timed out after 1 s"
    assert row["result"] is not None and row["result"]["stdout"] == "started\n"


async def test_output_with_nul_bytes_is_recorded_with_a_replacement_character(
    settings: Settings, db: asyncpg.Connection
) -> None:
    task = await new_task(db, "binary", "command", {"argv": ["printf", "a\\000b"]})
    await run_pipeline(settings, db, {"succeeded": 1})
    row = await only_result(db, task.id)
    assert row["result"]["stdout"] == "a\ufffdb"
    assert row["result"]["stdout_bytes"] == 3


async def test_http_headers_get_the_tasks_secrets_filled_in_at_run_time(
    settings: Settings, db: asyncpg.Connection, target: Target
) -> None:
    keyed = settings.model_copy(update={"secret_key": Fernet.generate_key().decode()})
    spec = TaskCreate(
        name="authorized",
        type="http",
        secrets={"TOKEN": SecretStr("s3cr3t")},
        payload={
            "url": target.url("/hook"),
            "headers": {"Authorization": "Bearer {{secrets.TOKEN}}", "X-Other": "{{x}}"},
        },
    )
    await create_task(db, spec, secret_key=keyed.secret_key)
    assert "s3cr3t" not in repr(spec)
    await run_pipeline(keyed, db, {"succeeded": 1})
    assert target.requests[0]["authorization"] == "Bearer s3cr3t"
    assert target.requests[0]["x-other"] == "{{x}}"
