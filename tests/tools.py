"""The programs the suite drives besides the Python packages, and a check that they are all here before it starts.

A missing one stops the run at once with one line naming the command that installs it: a test is never skipped
because its tool is missing. `make test` installs the browser itself (see the Makefile).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def pg_bin() -> Path:
    """The newest PostgreSQL server's binaries as Debian lays them out (/usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True, slots=True)
class Tool:
    what: str  # what the tests use it for
    path: Path
    install: str  # the command that installs it

    def missing(self) -> bool:
        return not (self.path.is_file() and os.access(self.path, os.X_OK))


def required() -> list[Tool]:
    rabbit = "sudo apt-get install rabbitmq-server"
    return [
        Tool("chromium (the dashboard's browser test)", CHROMIUM, "make tools, or: sudo apt-get install chromium"),
        Tool(
            "promtool (alert rules' checks and unit tests)",
            Path("/usr/bin/promtool"),
            "make tools, or: sudo apt-get install prometheus",
        ),
        Tool("rabbitmqctl (queue cleanup, fault tests)", RABBIT_BIN / "rabbitmqctl", rabbit),
        Tool("rabbitmq-server (the fault tests' private node)", RABBIT_BIN / "rabbitmq-server", rabbit),
        Tool("pg_ctl (the fault tests' private cluster)", pg_bin() / "pg_ctl", "sudo apt-get install postgresql"),
        Tool("pg_dump (schema.sql against the migrations)", pg_bin() / "pg_dump", "sudo apt-get install postgresql"),
        Tool("runuser (servers run as their own users)", Path("/usr/sbin/runuser"), "sudo apt-get install util-linux"),
    ]


def missing_tools() -> str | None:
    """One line naming every missing tool and how to install it, or None when all are here."""
    gone = [tool for tool in required() if tool.missing()]
    if not gone:
        return None
    return "the tests need " + "; ".join(f"{t.what}: missing {t.path}, install with `{t.install}`" for t in gone)
