"""The suite needs no server of the machine's: run in a network namespace of its own, where nothing on this
machine's ports can be reached, a selection that uses both PostgreSQL and RabbitMQ passes on the servers the
suite starts itself (tests/services.py), and leaves none of them behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace of its own takes root")

# A test on the database and one that publishes to the broker and reads from it.
SELECTION = (
    "tests/test_cli.py::test_migrate_creates_the_database_and_is_idempotent",
    "tests/distributor/test_requests.py::test_requests_become_runs_once_per_idempotency_key_and_run",
)


@needs_root
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_suite_runs_where_no_server_of_the_machine_can_be_reached(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_TEST_")}
    for given in ("DATABASE_URL", "AMQP_URL", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        env.pop(given, None)
    env["TMPDIR"] = str(tmp_path)  # where its servers leave nothing, unless /dev/shm has room
    before = _leftovers()
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:xdist", *SELECTION]
    ran = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    assert f"{len(SELECTION)} passed" in ran.stdout, ran.stdout[-2000:]
    assert _leftovers() == before


def _leftovers() -> set[str]:
    """The servers' directories of test sessions (tests/services.py) whose pytest process is gone."""
    found = set()
    for root in (Path("/dev/shm"), Path("/tmp")):
        for path in root.glob("taskmill-tests-*"):
            pid = path.name.removeprefix("taskmill-tests-")
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                found.add(str(path))
    return found
