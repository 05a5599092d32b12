"""What a jailed run sees, whom it runs as and what it may write (taskmill/tasktypes/jail.py, view.py, uids.py).

Two runs at once through a real root processor: each has a uid of its own from TASKMILL_COMMAND_UIDS, and neither
can list or read the other's /tmp, /dev/shm, cwd or install environment, nor the host's secrets, the install cache
or the processor's own files. A run's writes are bounded (TASKMILL_COMMAND_DISK_MB) and named when they hit the
bound; its spawn file, install environment, checks and run_if conditions go through the same jail; a processor that
is not root keeps it all, in a user namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

import distributor.service
from taskmill.settings import Settings
from taskmill.spawn import Flow, Parent
from taskmill.tasktypes.base import RunContext, TaskFailed, TaskSkipped
from taskmill.tasktypes.command import COMMAND
from taskmill.tasktypes.install import InstallCache
from taskmill.tasktypes.jail import Jail
from taskmill.tasktypes.uids import NoFreeUid, UidRange
from tests.helpers import exec_role_process, new_task, stop_process, wait_until, within_reach
from tests.processor.test_install import one_module_wheel
from tests.processor.test_jail import _isolation_of, _run, results

REPO = Path(__file__).resolve().parents[2]
RANGE = (61184, 65519)
# What a jail shows at its top: the system's directories (or their links into /usr), its /dev, /proc and /tmp.
SYSTEM = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr", "var"}


@asynccontextmanager
async def jailed_processor(settings: Settings, **env: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real processor with the default isolation (namespaces, a uid of its own for each run)."""
    proc = await exec_role_process(  # what the jail hides is what the kernel shows of an exec'd processor
        settings, "processor", TASKMILL_COMMAND_ISOLATION="namespaces", TASKMILL_COMMAND_USER="", **env
    )
    try:
        yield proc
    finally:
        await stop_process(proc)


def jail_of(settings: Settings, **update: Any) -> Jail:
    jail = Jail.detect(settings.model_copy(update={"command_isolation": "namespaces", "command_user": "", **update}))
    assert jail.refused is None, jail.refused
    return jail


def context(http: httpx.AsyncClient, jail: Jail, **options: Any) -> RunContext:
    return RunContext(1, 1, 1, 20.0, 64 * 1024, http, jail=jail, **options)


VICTIM = """
echo "{tmp}" > /tmp/secret.txt
echo "{shm}" > /dev/shm/secret
echo "RESULT uid=$(id -u)"
sleep 1
echo "RESULT kept=$(grep -c . /tmp/secret.txt)"
sleep 5
"""

ATTACKER = r"""
echo "RESULT uid=$(id -u)"
sleep 1
echo "--- the other run's cwd"
ls -la "$VICTIM_CWD" 2>&1
cat "$VICTIM_CWD/cwd-secret.txt" 2>&1
echo "--- the install cache"
ls -laR "$CACHE" 2>&1 | head -40
cat "$CACHE"/envs/*/secret.txt 2>&1
echo "--- the other run's /tmp and /dev/shm"
cat /proc/[0-9]*/root/tmp/secret.txt /proc/[0-9]*/root/dev/shm/secret 2>&1
find /tmp /dev/shm /var /etc /run -name 'secret*' 2>&1
echo "--- the system's and the processor's secrets"
cat /etc/shadow 2>&1 | head -2
cat "$KEY_FILE" 2>&1
ls -la /root 2>&1
echo "--- the processor's own files"
ls "$CHECKOUT" "$VENV" 2>&1
echo "RESULT top=$(ls / | wc -l)"
ls /
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone on the host may enter (pytest's tmp_path lies in one of root's own, 0700), outside /tmp
    (which a jail replaces with its own): what it holds is kept from a run by the jail alone."""
    with tempfile.TemporaryDirectory(prefix="taskmill-jail-", dir="/var/tmp") as where:
        Path(where).chmod(0o755)
        yield Path(where)


async def test_two_runs_at_once_have_uids_of_their_own_and_neither_sees_the_others_files(
    settings: Settings, db: asyncpg.Connection, open_dir: Path
) -> None:
    key = "zmYsdU0GTm8w7Mwc6NCrFx7wOqd0C9tAqpLbRh3nCpI="
    key_file = open_dir / "secret-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o644)
    cache = open_dir / "cache"
    victim_cwd = open_dir / "victim"
    victim_cwd.mkdir()
    canary = {name: f"{name}-canary-{secrets.token_hex(8)}" for name in ("cwd", "env", "tmp", "shm")}
    (victim_cwd / "cwd-secret.txt").write_text(canary["cwd"] + "\n")
    (victim_cwd / "cwd-secret.txt").chmod(0o644)  # readable by anyone on the host: only the jail keeps it
    victim = {
        "argv": ["sh", "-c", VICTIM.format(tmp=canary["tmp"], shm=canary["shm"])],
        "cwd": str(victim_cwd),
        "install": [["sh", "-c", f"echo {canary['env']} > secret.txt; chmod 644 secret.txt"]],
    }
    attacker = {
        "argv": ["sh", "-c", ATTACKER],
        "env": {
            "VICTIM_CWD": str(victim_cwd),
            "CACHE": str(cache),
            "KEY_FILE": str(key_file),
            "CHECKOUT": str(REPO),
            "VENV": sys.prefix,
        },
    }
    async with jailed_processor(
        settings, TASKMILL_CACHE_DIR=str(cache), TASKMILL_SECRET_KEY_FILE=str(key_file)
    ) as proc:
        isolation = await _isolation_of(db, proc.pid)
        assert "each run as a uid of its own from 61184-65519" in isolation, isolation
        assert "a private /tmp of 512 MB" in isolation, isolation
        task = await new_task(db, "victim", "command", victim, timeout_seconds=20)
        await distributor.service.run(settings, until_idle=True)

        async def victim_running() -> bool:
            status = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", task.id)
            return bool(status == "running") and any((cache / "envs").glob("*/.ready"))

        await wait_until(victim_running, 20, what="the victim to run")
        seen = await _run(db, settings, "attacker", attacker)

        async def victim_done() -> bool:
            status = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", task.id)
            return status in ("succeeded", "failed", "dead")

        await wait_until(victim_done, 20, what="the victim to finish")
        row = await db.fetchrow(
            "SELECT s.status::text AS status, s.error, r.result FROM task_schedule s "
            "JOIN task_results r ON r.run_id = s.id WHERE s.task_id = $1",
            task.id,
        )
    assert row is not None and row["status"] == "succeeded", row
    own = results(row["result"]["stdout"])
    assert own["kept"] == 1  # its own /tmp held its file meanwhile
    output = seen["result"]["stdout"] + seen["result"]["stderr"]
    assert seen["status"] == "succeeded", output
    theirs = results(output)
    for name, value in canary.items():
        assert value not in output, f"the attacker read the victim's {name} file:\n{output}"
    # A uid each, from the range, never the same while both run.
    assert RANGE[0] <= own["uid"] <= RANGE[1] and RANGE[0] <= theirs["uid"] <= RANGE[1], output
    assert own["uid"] != theirs["uid"], output
    assert key not in output
    shadow_first = Path("/etc/shadow").read_text().splitlines()[0]
    assert shadow_first not in output
    assert "pyproject.toml" not in output and "pyvenv.cfg" not in output  # the checkout and the venv
    # At the top: the system, its own /tmp and spawn file (/run), nothing of the host's homes, caches or checkouts.
    top = output.split("RESULT top=")[1].splitlines()[1:]
    assert set(top) <= SYSTEM | {"run"}, top
    assert theirs["top"] == len(top)


async def test_a_run_that_writes_past_its_disk_limit_fails_saying_so_and_the_host_keeps_nothing(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    marker = f"fill-{secrets.token_hex(4)}"
    fill = f"head -c 10000000 /dev/zero > /tmp/{marker}"
    async with jailed_processor(settings, TASKMILL_COMMAND_DISK_MB="4", TASKMILL_CACHE_DIR=str(tmp_path)) as proc:
        assert "a private /tmp of 4 MB" in await _isolation_of(db, proc.pid)
        full = await _run(db, settings, "filler", {"argv": ["sh", "-c", fill]})
        fits = await _run(db, settings, "fits", {"argv": ["sh", "-c", "head -c 3000000 /dev/zero > $HOME/f; echo ok"]})
    assert (full["status"], full["error"]) == ("failed", "exit code 1: disk limit of 4 MB reached"), full
    assert "No space left on device" in full["result"]["stderr"]
    assert (fits["status"], fits["result"]["stdout"]) == ("succeeded", "ok\n")
    assert not Path(f"/tmp/{marker}").exists()


async def test_a_jailed_processor_creates_what_a_command_spawns_and_its_spawn_file_is_its_own(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # Each line: a child; then whether the file is in the jail's own tmpfs (not the host's) and the run's own.
    script = (
        'printf \'%s\\n\' \'{"type": "noop", "key": "a"}\' \'{"type": "noop", "key": "b"}\' >> "$TASKMILL_SPAWN_FILE"; '
        'stat -c "%U %s" "$TASKMILL_SPAWN_FILE"; df --output=fstype,size "$(dirname "$TASKMILL_SPAWN_FILE")" | tail -1'
    )
    async with jailed_processor(settings, TASKMILL_CACHE_DIR=str(tmp_path)) as proc:
        assert (await _isolation_of(db, proc.pid)).startswith("namespaces")
        parent = await _run(db, settings, "spawner", {"argv": ["sh", "-c", script]})
    assert parent["status"] == "succeeded", parent
    owner, size, fstype, blocks = parent["result"]["stdout"].split()
    assert (owner, size, fstype, blocks) == ("taskmill-run", "58", "tmpfs", "4100")
    children = await db.fetch("SELECT name FROM tasks WHERE name LIKE 'spawn:%' ORDER BY name")
    assert [r["name"].rsplit(":", 1)[1] for r in children] == ["a", "b"]


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("python3 -c \"open('/tmp/big', 'wb').write(b'x' * 5_000_000)\"", "exit code 1: disk limit of 2 MB reached"),
        ("head -c 5000000 /dev/zero > /dev/shm/big", "exit code 1: disk limit of 2 MB reached"),
        ("echo x > /big", "exit code 2"),  # the jail's root is read-only: not a disk limit
    ],
)
async def test_every_place_a_run_may_write_is_bounded(settings: Settings, script: str, reason: str) -> None:
    jail = jail_of(settings, command_disk_mb=2)
    async with httpx.AsyncClient() as http:
        with pytest.raises(TaskFailed) as failed:
            await COMMAND.run(COMMAND.parse({"argv": ["sh", "-c", script]}), context(http, jail))
    assert failed.value.reason == reason, failed.value.result


async def test_a_spawn_file_written_in_the_jail_reaches_the_processor_and_a_huge_one_is_refused(
    settings: Settings,
) -> None:
    jail = jail_of(settings)
    spawns = 'printf \'%s\\n\' \'{"type": "noop", "key": "one"}\' \'{"wait": true}\' >> "$TASKMILL_SPAWN_FILE"'
    huge = 'head -c 6000000 /dev/zero | tr "\\0" x >> "$TASKMILL_SPAWN_FILE"; echo "ls: $(ls -la /run/taskmill)"'
    parent = Parent(1, 1, datetime.now(UTC), 10, 100)
    async with httpx.AsyncClient() as http:
        flow = Flow(parent)
        await COMMAND.run(COMMAND.parse({"argv": ["sh", "-c", spawns]}), context(http, jail, flow=flow))
        assert [s.key for s in flow.pending] == ["one"] and flow.wait
        with pytest.raises(Exception, match="TASKMILL_SPAWN_FILE holds more than 4194304 bytes"):
            await COMMAND.run(COMMAND.parse({"argv": ["sh", "-c", huge]}), context(http, jail, flow=Flow(parent)))


async def test_an_install_environment_is_seen_read_only_and_alone(settings: Settings, tmp_path: Path) -> None:
    jail = jail_of(settings, cache_dir=str(tmp_path / "cache"))
    cache = InstallCache(tmp_path / "cache", 100 * 1024 * 1024)
    tool = "mkdir -p bin && printf '#!/bin/sh\\necho tool-{n}\\n' > bin/tool && chmod +x bin/tool"
    look = 'tool; touch "$VIRTUAL_ENV/x" 2>/dev/null || echo read-only; ls "$(dirname "$VIRTUAL_ENV")"; id -u'
    async with httpx.AsyncClient() as http:
        seen = []
        for n in (1, 2):
            payload = {"argv": ["sh", "-c", look], "install": [["sh", "-c", tool.format(n=n)]]}
            result = await COMMAND.run(COMMAND.parse(payload), context(http, jail, install_cache=cache))
            seen.append(result["stdout"].split())
    envs = sorted(p.name for p in (tmp_path / "cache" / "envs").iterdir() if p.is_dir())
    assert len(envs) == 2
    for n, (out, ro, listed, uid) in enumerate(seen, 1):  # one name listed: its own environment, no other
        assert (out, ro) == (f"tool-{n}", "read-only")
        assert listed in envs
        assert RANGE[0] <= int(uid) <= RANGE[1]
    assert seen[0][2] != seen[1][2]


@pytest.mark.slow
async def test_requirements_are_installed_in_the_jail_into_a_virtualenv_the_command_sees_read_only(
    settings: Settings, open_dir: Path
) -> None:
    wheels = open_dir / "wheels"
    wheels.mkdir()
    wheel = one_module_wheel(wheels)
    # Offline: the wheel is on a path the jail shows, and no index is asked.
    jail = jail_of(settings, cache_dir=str(open_dir / "cache"), command_paths=str(wheels))
    cache = InstallCache(open_dir / "cache", 500 * 1024 * 1024)
    script = "import sys, tmwheel; print(tmwheel.VALUE, sys.prefix); open(sys.prefix + '/x', 'w')"
    payload = {"argv": ["python", "-c", script], "requirements": ["--no-index", str(wheel)]}
    async with httpx.AsyncClient() as http:
        ctx = replace(context(http, jail, install_cache=cache), timeout_seconds=120.0)
        with pytest.raises(TaskFailed) as failed:
            await COMMAND.run(COMMAND.parse(payload), ctx)
    [env] = [p for p in (open_dir / "cache" / "envs").iterdir() if p.is_dir()]
    assert failed.value.result is not None
    assert failed.value.result["stdout"] == f"from the wheel {env}\n"
    assert "Read-only file system" in failed.value.result["stderr"]


async def test_checks_and_run_if_run_in_the_same_jail_as_a_uid_of_the_range(settings: Settings) -> None:
    jail = jail_of(settings)
    probe = "echo \"uid $(id -u) sees $(ls / | tr '\\n' ' ')\" >&2; exit 1"
    async with httpx.AsyncClient() as http:
        with pytest.raises(TaskFailed) as failed:
            payload = {"argv": ["true"], "checks": [["true"], ["sh", "-c", probe]]}
            await COMMAND.run(COMMAND.parse(payload), context(http, jail))
        with pytest.raises(TaskSkipped) as skipped:
            await COMMAND.run(COMMAND.parse({"argv": ["true"], "run_if": ["sh", "-c", probe]}), context(http, jail))
    for reason in (failed.value.reason, skipped.value.reason):
        seen = re.search(r"exit 1: uid (\d+) sees (.*)$", reason)
        assert seen is not None, reason
        assert RANGE[0] <= int(seen[1]) <= RANGE[1], reason
        assert set(seen[2].split()) <= SYSTEM, reason


@pytest.mark.parametrize(
    ("cwd", "reason", "permanent"),
    [
        ("/", "cwd '/' would show what the jail hides: /run/secrets", True),
        ("{cache}/envs", "cwd '{cache}/envs' would show what the jail hides: {cache}", True),
        ("relative/dir", "cwd 'relative/dir': a confined command needs an absolute path", True),
        ("/no/such/dir", "cwd '/no/such/dir': no such directory on this host", False),
    ],
)
async def test_a_cwd_that_would_show_what_the_jail_hides_is_refused(
    settings: Settings, tmp_path: Path, cwd: str, reason: str, permanent: bool
) -> None:
    cache = tmp_path / "cache"
    (cache / "envs").mkdir(parents=True)
    jail = jail_of(settings, cache_dir=str(cache))
    async with httpx.AsyncClient() as http:
        with pytest.raises(TaskFailed) as failed:
            payload = {"argv": ["true"], "cwd": cwd.format(cache=cache)}
            await COMMAND.run(COMMAND.parse(payload), context(http, jail))
    assert failed.value.reason == reason.format(cache=cache) and failed.value.permanent == permanent


async def test_a_named_account_writes_its_cwd_where_a_uid_of_the_range_may_not(
    settings: Settings, tmp_path: Path
) -> None:
    jail = replace(jail_of(settings), allowed_users=frozenset({"daemon"}))
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    write = "echo hi > out-$(id -un) && echo wrote || echo read-only"
    async with httpx.AsyncClient() as http:
        ctx = context(http, jail)
        named = await COMMAND.run(COMMAND.parse({"argv": ["sh", "-c", write], "cwd": str(work), "user": "daemon"}), ctx)
        own = await COMMAND.run(COMMAND.parse({"argv": ["sh", "-c", write], "cwd": str(work)}), ctx)
    assert (named["stdout"], own["stdout"]) == ("wrote\n", "read-only\n")
    assert [p.name for p in work.iterdir()] == ["out-daemon"]
    assert (work / "out-daemon").stat().st_uid == pwd.getpwnam("daemon").pw_uid


async def test_command_paths_are_shown_read_only_and_may_not_show_what_the_jail_hides(
    settings: Settings, open_dir: Path
) -> None:
    tools = open_dir / "tools"
    tools.mkdir()
    (tools / "hello").write_text("#!/bin/sh\necho hello from $(dirname $0)\n")
    (tools / "hello").chmod(0o755)
    jail = jail_of(settings, command_paths=str(tools))
    assert f"a minimal /etc, {tools} read-only" in jail.describe()
    script = f"hello; touch {tools}/x 2>/dev/null || echo read-only; ls {open_dir}"
    async with httpx.AsyncClient() as http:
        env = {"PATH": f"{tools}:/usr/bin:/bin"}
        result = await COMMAND.run(COMMAND.parse({"argv": ["sh", "-c", script], "env": env}), context(http, jail))
    assert result["stdout"] == f"hello from {tools}\nread-only\ntools\n"  # nothing else of its parent
    for paths, problem in [
        ("/", "TASKMILL_COMMAND_PATHS: / would show what the jail hides: "),
        ("/root", "TASKMILL_COMMAND_PATHS: /root would show what the jail hides: /root"),
        ("/no/such/path", "TASKMILL_COMMAND_PATHS: /no/such/path does not exist on this host"),
    ]:
        refused = Jail.detect(settings.model_copy(update={"command_isolation": "namespaces", "command_paths": paths}))
        assert refused.refused is not None and refused.refused.startswith(problem), refused.refused
    with pytest.raises(ValidationError, match="'relative' is not an absolute path"):
        Settings(command_paths="/opt,relative")


async def test_command_user_replaces_the_range_and_command_group_is_the_group_of_either(settings: Settings) -> None:
    daemon = pwd.getpwnam("daemon")
    fixed = jail_of(settings, command_user="daemon")
    assert fixed.uids is None and fixed.describe().endswith("; as daemon")
    grouped = jail_of(settings, command_group="daemon")
    assert grouped.uids is not None
    who = ["sh", "-c", "echo $(id -u) $(id -g) $(id -gn) $TOKEN"]
    async with httpx.AsyncClient() as http:
        as_daemon = await COMMAND.run(COMMAND.parse({"argv": who}), context(http, fixed, secrets={"TOKEN": "t1"}))
        in_group = await COMMAND.run(COMMAND.parse({"argv": who}), context(http, grouped, secrets={"TOKEN": "t2"}))
    assert as_daemon["stdout"].split() == [str(daemon.pw_uid), str(daemon.pw_gid), "daemon", "t1"]
    uid, gid, group, token = in_group["stdout"].split()
    assert RANGE[0] <= int(uid) <= RANGE[1] and (gid, group, token) == (str(daemon.pw_gid), "daemon", "t2")
    refused = Jail.detect(
        settings.model_copy(update={"command_isolation": "namespaces", "command_user": "", "command_group": "nogrp"})
    )
    assert refused.refused == "cannot run commands: no group 'nogrp' on this host"


def test_runs_hold_distinct_uids_across_processors_and_a_full_range_says_so(tmp_path: Path) -> None:
    uids = UidRange.parse("61184-61186")
    locks = tmp_path / "uids"
    # Another processor of the host holds one of them (its own process, its own lock).
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from taskmill.tasktypes.uids import UidRange
            lease = UidRange(61184, 61184).take(Path({str(locks)!r}))
            print(lease.uid, flush=True)
            time.sleep(30)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "61184"
        first, second = uids.take(locks), uids.take(locks)
        assert {first.uid, second.uid} == {61185, 61186}
        with pytest.raises(NoFreeUid, match="every uid of TASKMILL_COMMAND_UIDS=61184-61186 is taken"):
            uids.take(locks)
        first.release()
        again = uids.take(locks)
        assert again.uid == first.uid
        again.release()
        second.release()
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    # The holder is gone, and its lock with it.
    taken = [uids.take(locks) for _ in range(3)]
    assert sorted(lease.uid for lease in taken) == [61184, 61185, 61186]
    # A uid an account of the host has is never handed out.
    with pytest.raises(NoFreeUid):
        UidRange.parse("1-1").take(locks)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("lots", "'lots' is not a range of uids like 61184-65519"),
        ("65519-61184", "the first no larger than the last"),
        ("0-100", "uids from 1 to 2147483646"),
        ("60000-65534", "holds 65534, which stands for no user or for nobody"),
    ],
)
def test_a_bad_uid_range_stops_the_processor_naming_the_setting(text: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(command_uids=text)
    ran = subprocess.run(
        [sys.executable, "-m", "taskmill.cli", "processor"],
        env={**os.environ, "TASKMILL_COMMAND_UIDS": text},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2
    assert ran.stderr.startswith("taskmill: bad setting: TASKMILL_COMMAND_UIDS: Value error, "), ran.stderr
    assert problem in ran.stderr


def test_a_range_smaller_than_the_runs_at_once_refuses_command_runs_saying_why(settings: Settings) -> None:
    jail = Jail.detect(
        settings.model_copy(
            update={"command_isolation": "namespaces", "command_user": "", "command_uids": "61184-61185"}
        )
    )
    assert jail.refused == (
        "TASKMILL_COMMAND_UIDS=61184-61185 leaves 2 uids free of accounts, fewer than the 10 runs at once of "
        "TASKMILL_CONCURRENCY: widen the range"
    )


NOT_ROOT = """
import asyncio, json, sys
from datetime import UTC, datetime
import httpx
from taskmill.settings import Settings
from taskmill.spawn import Flow, Parent
from taskmill.tasktypes.base import RunContext, TaskFailed
from taskmill.tasktypes.command import COMMAND
from taskmill.tasktypes.jail import Jail

async def main():
    jail = Jail.detect(Settings(command_isolation="namespaces", command_disk_mb=2))
    out = {"describe": jail.describe()}
    async with httpx.AsyncClient() as http:
        flow = Flow(Parent(1, 1, datetime.now(UTC), 10, 100))
        ctx = RunContext(1, 1, 1, 20.0, 4096, http, jail=jail, flow=flow)
        script = sys.argv[1]
        result = await COMMAND.run(COMMAND.parse({"argv": ["sh", "-c", script], "cwd": sys.argv[2]}), ctx)
        out["stdout"] = result["stdout"]
        out["spawned"] = [s.key for s in flow.pending]
        try:
            await COMMAND.run(COMMAND.parse({"argv": ["sh", "-c", "head -c 3000000 /dev/zero > /tmp/x"]}), ctx)
        except TaskFailed as exc:
            out["full"] = exc.reason
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_processor_that_is_not_root_keeps_runs_in_the_same_jail(open_dir: Path) -> None:
    work = open_dir / "work"  # a cwd the processor's user can reach
    work.mkdir()
    work.chmod(0o777)
    script = (
        "id -u; ls / | tr '\\n' ,; echo; echo x > mine && echo cwd-writable; "
        'echo \'{"type": "noop", "key": "k"}\' >> "$TASKMILL_SPAWN_FILE"'
    )
    # The system's python3 (the venv's interpreter lives under /root, which nobody may enter) with this checkout's
    # packages: a processor's code, run as an ordinary user, who can reach them wherever they are (`within_reach`).
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    as_nobody = [str(shutil.which("runuser")), "-u", "nobody", "--", "/usr/bin/python3", "-c", NOT_ROOT, script]
    ran = subprocess.run(
        within_reach([*as_nobody, str(work)], open_dir / "stash", (Path(sys.prefix), REPO)),
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{site}:{REPO}", "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert "as nobody in a user namespace of their own" in out["describe"]
    uid, top, wrote = out["stdout"].split()
    assert uid == "65534" and wrote == "cwd-writable"  # the processor's own account may write its cwd
    assert set(top.strip(",").split(",")) <= SYSTEM | {"run"}
    assert out["spawned"] == ["k"]
    assert out["full"] == "exit code 1: disk limit of 2 MB reached"
    assert (work / "mine").stat().st_uid == pwd.getpwnam("nobody").pw_uid
