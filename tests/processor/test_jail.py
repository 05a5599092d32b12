"""Command runs cannot read or signal the processor or each other (taskmill/tasktypes/jail.py).

The processor runs as a real process with canary secrets in its environment and in a secret file; a command task
then tries what the issue's attacker did: every /proc/*/environ and cmdline, the processor's memory, its secret
files, root's files, and SIGKILL of every process it can see. Before anything is signalled the test checks that
the isolation is in force (the processor's own report, in the database); the command itself also refuses to
signal anything when it sees more than a handful of processes, in case the sandbox were not there (`kill -9 -1`
by root outside a PID namespace ends every process of the machine).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import distributor.service
from taskmill.settings import Settings
from taskmill.tasktypes.base import RunContext, TaskFailed
from taskmill.tasktypes.command import COMMAND
from taskmill.tasktypes.jail import Jail
from tests.faults import procs
from tests.helpers import exec_role_process, new_task, stop_process, wait_until, within_reach

CANARIES = {
    "JWT_SECRET": "jwt-canary-" + secrets.token_hex(16),
    "TASKMILL_CANARY_ENV": "env-canary-" + secrets.token_hex(16),
}


@pytest.fixture
async def processor(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    """A processor with the default isolation (namespaces, each run a uid of its own), canaries in its environment
    and in the file its TASKMILL_SECRET_KEY_FILE names; yields it and the secret file."""
    key_file = tmp_path / "secret-key"
    key = "zmYsdU0GTm8w7Mwc6NCrFx7wOqd0C9tAqpLbRh3nCpI="  # a Fernet key: the canary is the key itself
    key_file.write_text(key + "\n")
    key_file.chmod(0o644)  # as Docker mounts a secret: readable by all, so only the mask keeps it from commands
    proc = await exec_role_process(  # what the jail hides is what the kernel shows of an exec'd processor
        settings,
        "processor",
        TASKMILL_COMMAND_ISOLATION="namespaces",
        TASKMILL_COMMAND_USER="",
        TASKMILL_SECRET_KEY_FILE=str(key_file),
        **CANARIES,
    )
    try:
        yield proc, key_file
    finally:
        await stop_process(proc)


async def _isolation_of(db: asyncpg.Connection, pid: int) -> str:
    """What the processor of `pid` registered about its command runs (waits for it to register)."""
    worker = f"{os.uname().nodename}:{pid}"

    async def registered() -> bool:
        return bool(await db.fetchval("SELECT 1 FROM processors WHERE worker = $1", worker))

    await wait_until(registered, 20, what=f"processor {worker} to register")
    isolation: str = await db.fetchval("SELECT command_isolation FROM processors WHERE worker = $1", worker)
    return isolation


async def _run(
    db: asyncpg.Connection, settings: Settings, name: str, payload: dict[str, Any], timeout_seconds: float = 20
) -> asyncpg.Record:
    task = await new_task(db, name, "command", payload, timeout_seconds=timeout_seconds)
    await distributor.service.run(settings, until_idle=True)

    async def ended() -> bool:
        status = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", task.id)
        return status in ("succeeded", "failed", "dead")

    await wait_until(ended, 30, what=f"run of {name} to end")
    row = await db.fetchrow(
        "SELECT s.status::text AS status, s.error, r.result FROM task_schedule s "
        "JOIN task_results r ON r.run_id = s.id WHERE s.task_id = $1",
        task.id,
    )
    assert row is not None
    return row


ATTACK = r"""
echo "I am $(id -un) ($(id -u)), pid $$"
echo "--- every process I can see"
for p in /proc/[0-9]*; do
  echo "$p: $(tr '\0' ' ' < $p/cmdline 2>&1)"
  tr '\0' '\n' < $p/environ 2>&1
done
echo "--- the processor, by its host pid"
cat /proc/$PROCESSOR/environ /proc/$PROCESSOR/cmdline 2>&1 | tr '\0' '\n'
head -c 4096 /proc/$PROCESSOR/mem 2>&1 | tr -dc '[:print:]\n'
echo "--- secret files and root's home"
cat "$KEY_FILE" 2>&1
ls -la /root 2>&1
cat /etc/shadow 2>&1 | head -3
cat /run/secrets/* 2>&1
echo "--- writing outside cwd and /tmp"
touch /etc/taskmill-was-here /usr/taskmill-was-here 2>&1
echo "--- signals"
kill -9 "$PROCESSOR" 2>&1
seen=$(ls /proc | grep -cE '^[0-9]+$')
echo "RESULT visible=$seen"
echo "RESULT uid=$(id -u)"
# Last: it takes the sandbox down with it (its own guard shell is among what it can see).
if [ "$seen" -lt 10 ]; then kill -9 -1; fi
"""


def results(output: str) -> dict[str, int]:
    """The `RESULT name=<number>` lines the script printed (its own text, listed with /proc, has no numbers)."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^RESULT (\w+)=(\d+)$", output, flags=re.MULTILINE)}


async def test_a_command_cannot_read_or_signal_the_processor_and_its_output_holds_no_secret(
    settings: Settings, db: asyncpg.Connection, processor: tuple[asyncio.subprocess.Process, Path]
) -> None:
    proc, key_file = processor
    isolation = await _isolation_of(db, proc.pid)
    # First: the isolation is in force. Only then may the command signal anything.
    assert isolation.startswith("namespaces (bubblewrap"), isolation
    assert "pid, mount, ipc" in isolation and "each run as a uid of its own from 61184-65519" in isolation
    # Another run at work meanwhile, with a secret of its own in its environment.
    victim_secret = "victim-canary-" + secrets.token_hex(16)
    victim = await new_task(db, "victim", "command", {"argv": ["sleep", "4"], "env": {"TOKEN": victim_secret}})
    await distributor.service.run(settings, until_idle=True)

    async def victim_running() -> bool:
        status = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", victim.id)
        return bool(status == "running")

    await wait_until(victim_running, 20, what="the other run to start")
    payload = {"argv": ["sh", "-c", ATTACK], "env": {"PROCESSOR": str(proc.pid), "KEY_FILE": str(key_file)}}
    row = await _run(db, settings, "attacker", payload)
    output = row["result"]["stdout"] + row["result"]["stderr"]
    found = results(output)
    assert 61184 <= found["uid"] <= 65519, output
    # It did send SIGKILL to everything it could see: its own sandbox, whose guard shell died of it.
    assert (row["status"], row["error"]) == ("failed", "killed by SIGKILL"), output
    for canary in [*CANARIES.values(), victim_secret, key_file.read_text().strip(), settings.database_url]:
        assert canary not in output
    assert "DATABASE_URL" not in output and "JWT_SECRET" not in output
    assert not Path("/etc/taskmill-was-here").exists() and not Path("/usr/taskmill-was-here").exists()
    # Its own processes only: the sandbox's init, the guard shell and what it ran.
    assert found["visible"] <= 6, output
    assert proc.returncode is None, "the processor died"
    assert await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", victim.id) == "running"

    async def victim_done() -> bool:
        status = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", victim.id)
        return bool(status == "succeeded")

    await wait_until(victim_done, 20, what="the other run to finish untouched")
    # And the processor keeps serving.
    after = await _run(db, settings, "after", {"argv": ["echo", "still here"]})
    assert (after["status"], after["result"]["stdout"]) == ("succeeded", "still here\n")


CONNECT = 'import os, socket; socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), 2)'


async def test_a_command_reads_its_cwd_writes_only_a_private_tmp_and_can_be_denied_the_network(
    settings: Settings, db: asyncpg.Connection, processor: tuple[asyncio.subprocess.Process, Path], tmp_path: Path
) -> None:
    proc, _ = processor
    assert (await _isolation_of(db, proc.pid)).startswith("namespaces")
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # writable by anyone on the host: the jail alone keeps a uid of the range from writing it
    (work / "input.txt").write_text("given\n")
    marker = f"taskmill-{uuid.uuid4().hex[:8]}"
    script = (
        f"cat input.txt; echo out > ./{marker} 2>/dev/null || echo cwd-read-only; echo t > /tmp/{marker} && "
        f"echo tmp-ok; echo x > {tmp_path}/{marker} 2>/dev/null || echo outside-refused; "
        f"python3 -c '{CONNECT}' 2>/dev/null && echo net-ok || echo net-refused"
    )
    with socket_listening() as port:
        online = await _run(
            db, settings, "online", {"argv": ["sh", "-c", script], "cwd": str(work), "env": {"PORT": str(port)}}
        )
        offline = await _run(
            db, settings, "offline",
            {"argv": ["sh", "-c", script], "cwd": str(work), "env": {"PORT": str(port)}, "network": False},
        )  # fmt: skip
    assert online["result"]["stdout"].split() == ["given", "cwd-read-only", "tmp-ok", "outside-refused", "net-ok"]
    assert offline["result"]["stdout"].split() == ["given", "cwd-read-only", "tmp-ok", "outside-refused", "net-refused"]
    assert not (work / marker).exists()
    assert not Path(f"/tmp/{marker}").exists()  # /tmp was its own
    assert not (tmp_path / marker).exists()


class socket_listening:
    """A TCP listener on 127.0.0.1 (the kernel accepts into its backlog: nothing needs to answer)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def test_a_killed_processor_or_a_timeout_leaves_no_process_of_the_sandbox_behind(
    settings: Settings, db: asyncpg.Connection, processor: tuple[asyncio.subprocess.Process, Path]
) -> None:
    proc, _ = processor
    assert (await _isolation_of(db, proc.pid)).startswith("namespaces")
    timed = f"{31 + secrets.randbelow(1000) / 1000:.3f}"
    row = await _run(db, settings, "slow", {"argv": ["sh", "-c", f"sleep {timed} & sleep {timed}"]}, 1)
    assert (row["status"], row["error"]) == ("failed", "timed out after 1 s")
    assert not [p for p in procs.pids() if f"sleep {timed}" in procs.cmdline(p)]

    held = f"{41 + secrets.randbelow(1000) / 1000:.3f}"
    task = await new_task(db, "held", "command", {"argv": ["sh", "-c", f"sleep {held} & sleep {held}"]})
    await distributor.service.run(settings, until_idle=True)

    def sleepers() -> list[int]:
        return [p for p in procs.pids() if procs.cmdline(p) == f"sleep {held}"]

    async def started() -> bool:
        return len(sleepers()) == 2

    await wait_until(started, 20, what="the command's two sleeps")
    proc.kill()
    await proc.wait()

    async def gone() -> bool:
        return not sleepers()

    await wait_until(gone, 3, what="the sandbox's processes to die with the processor")
    assert await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", task.id) == "running"


def test_a_run_as_user_must_be_on_the_allow_list_and_a_refusal_names_its_reason(settings: Settings) -> None:
    jail = Jail.detect(settings.model_copy(update={"command_isolation": "namespaces", "command_user": ""}))
    assert jail.refused is None, jail.refused
    assert jail.run_as is None and str(jail.uids) == "61184-65519"  # a uid of their own, from the range
    with pytest.raises(Exception, match="cannot run as 'daemon': not in TASKMILL_COMMAND_USERS"):
        jail.user_for("daemon")
    allowed = replace(jail, allowed_users=frozenset({"daemon"}))
    daemon = allowed.user_for("daemon")
    assert daemon is not None and daemon.uid == pwd.getpwnam("daemon").pw_uid and daemon.account
    with allowed.confine(["id", "-un"], run_as=daemon, network=True) as confined:
        ran = subprocess.run(confined.argv, capture_output=True, text=True, timeout=10, pass_fds=confined.fds)
    assert ran.stdout.strip() == "daemon", ran.stderr
    missing = Jail.detect(
        settings.model_copy(update={"command_isolation": "namespaces", "bwrap": "/nonexistent/bwrap"})
    )
    assert missing.refused is not None and "/nonexistent/bwrap" in missing.refused
    assert missing.describe().startswith("refusing command runs: command isolation cannot be had here")
    with pytest.raises(Exception, match="this processor refuses command runs"):
        missing.user_for(None)
    unknown = Jail.detect(settings.model_copy(update={"command_user": "no-such-user-here"}))
    assert unknown.refused == "cannot run commands: no user 'no-such-user-here' on this host"


def test_a_processor_that_is_not_root_confines_commands_in_a_user_namespace_of_their_own(
    settings: Settings, tmp_path: Path
) -> None:
    root_jail = Jail.detect(settings.model_copy(update={"command_isolation": "namespaces", "command_user": ""}))
    jail = replace(root_jail, root=False, run_as=None, uids=None, masked=())
    assert "as nobody in a user namespace" in jail.describe()
    script = (
        "id -u; ls /proc | grep -cE '^[0-9]+$'; touch /tmp/x && echo tmp-ok; touch /etc/x /x 2>/dev/null || echo ro; "
        "ls / | tr '\\n' ,; echo; head -c 3000000 /dev/zero > /tmp/big 2>/dev/null || echo full"
    )
    with replace(jail, disk_mb=2).confine(["sh", "-c", script], run_as=None, network=True) as confined:
        # Started as an ordinary user, as such a processor would start it.
        ran = subprocess.run(
            within_reach(["runuser", "-u", "nobody", "--", *confined.argv], tmp_path / "stash"),
            capture_output=True,
            text=True,
            timeout=10,
            pass_fds=confined.fds,
        )
    assert ran.returncode == 0, ran.stderr
    uid, visible, tmp, etc, top, full = ran.stdout.split()
    assert (uid, tmp, etc, full) == ("65534", "tmp-ok", "ro", "full") and int(visible) <= 4
    # The system and its own /tmp: no home, no /var/cache, no /work, no /root.
    assert set(top.strip(",").split(",")) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin",
                                              "tmp", "usr", "var"}, top  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"argv": ["python3", "-c", "x = bytearray(200 * 2**20)"], "limits": {"memory_mb": 64}}, "out of memory"),
        ({"argv": ["sh", "-c", "while :; do :; done"], "limits": {"cpu_seconds": 1}}, "cpu_seconds limit 1 reached"),
        ({"argv": ["sh", "-c", "head -c 3000000 /dev/zero > big"], "limits": {"file_mb": 1}}, "file_mb limit 1"),
    ],
)
async def test_limits_hold_inside_the_sandbox_and_are_named(
    settings: Settings, payload: dict[str, Any], reason: str
) -> None:
    jail = Jail.detect(settings.model_copy(update={"command_isolation": "namespaces", "command_user": ""}))
    assert jail.refused is None and jail.isolation == "namespaces"
    async with httpx.AsyncClient() as http:
        ctx = RunContext(1, 1, 1, 10.0, 4096, http, jail=jail)
        with pytest.raises(TaskFailed, match=reason):
            await COMMAND.run(COMMAND.parse(payload), ctx)
