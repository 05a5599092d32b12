"""What a confined command sees of the host: the system it runs on and a minimal /etc, nothing else.

A jailed run is shown, read-only: `/usr`, the `/bin`, `/sbin` and `/lib*` of the host as the host has them (the
symlinks of a merged /usr, or the directories), the few files of /etc that programs such as sh, python3 and curl
read (the dynamic linker's cache, name resolution, TLS certificates, the time zone, /etc/alternatives' links),
`passwd` and `group` files written for the run (root, nobody and the run's own user: no account of the host is
listed), and the operator's `TASKMILL_COMMAND_PATHS`. To that the jail adds the run's own: its cwd, its install
environment, a private /tmp. Everything else of the host (homes, /var, /srv, /opt, other runs' directories, the
install cache, the processor's own files) is not there at all.

A few paths stay hidden even where they would be shown: the processor's secret files, /run/secrets, its home, the
install cache and its runtime directory. A task's cwd may not be, hold or lie inside one of them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The directories of the system, shown read-only. /bin, /sbin and /lib* are symlinks into /usr on most systems.
SYSTEM_DIRS = ("/usr",)
SYSTEM_LINKS_OR_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc a command needs, each shown if the host has it.
ETC = (
    # The dynamic linker's cache and configuration.
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    # Name resolution and the network's databases.
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/networks",
    # TLS: the certificates that make https work, and OpenSSL's configuration (Debian and Red Hat layouts).
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/pki/ca-trust",
    "/etc/pki/tls/certs",
    "/etc/pki/tls/openssl.cnf",
    "/etc/crypto-policies",
    # Time, locale, file types, the system's name.
    "/etc/localtime",
    "/etc/timezone",
    "/etc/locale.alias",
    "/etc/mime.types",
    "/etc/os-release",
    # Debian's links for awk, editor, java, ... (symlinks only).
    "/etc/alternatives",
)
ETC_GLOBS = ("/etc/python3*",)  # Debian's python3 reads its sitecustomize from here
# The name a run with a uid of its own has inside the jail (`id -un`), with a group of the same name.
RUN_USER = "taskmill-run"
NOBODY = 65534


@dataclass(frozen=True, slots=True)
class Identity:
    """Whom the jail's passwd and group files list besides root and nobody: the run's user."""

    user: str
    uid: int
    gid: int
    group: str


def system_args(extra: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """bubblewrap's arguments that show the system (and `extra` host paths), and the roots they show."""
    args: list[str] = []
    roots: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.isdir(path):
            args += ["--ro-bind", path, path]
            roots.append(path)
    for path in SYSTEM_LINKS_OR_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            roots.append(path)
    made = Parents(roots)
    args += made.dir("/etc/.")
    for path in [*ETC, *sorted(p for pattern in ETC_GLOBS for p in glob.glob(pattern))]:
        if not os.path.lexists(path):
            continue
        args += made.dir(os.path.dirname(path) + "/.")
        if os.path.islink(path) and _under(os.path.realpath(path), roots):
            args += ["--symlink", os.readlink(path), path]  # a link into /usr stays a link (the zone's name)
        else:
            args += ["--ro-bind-try", path, path]  # a link elsewhere (/run/...): its file, where the link was
    args += ["--symlink", "/proc/self/mounts", "/etc/mtab"]
    for path in extra:
        args += [*made.dir(os.path.dirname(path) + "/."), "--ro-bind", path, path]
        roots.append(path)
    return args, roots


class Parents:
    """Makes the directories above a mount point readable (bubblewrap makes missing ones 0700), once each."""

    def __init__(self, roots: Iterable[str], made: Iterable[str] = ()) -> None:
        self._roots = list(roots)  # bound from the host: what lies under them exists
        self._made = set(made)  # directories of the jail's own, made already

    def dir(self, path: str) -> list[str]:
        """`--dir` for each missing ancestor of `path` (and `path` itself when it ends in `/.`)."""
        args: list[str] = []
        parts = os.path.normpath(path).split("/")[1:]
        for i in range(1, len(parts) + 1):
            ancestor = "/" + "/".join(parts[:i])
            if ancestor == "/" or ancestor in self._made or _under(ancestor, self._roots):
                continue
            self._made.add(ancestor)
            args += ["--perms", "0755", "--dir", ancestor]
        return args


def passwd_and_group(identity: Identity | None) -> tuple[bytes, bytes]:
    """The jail's /etc/passwd and /etc/group: root, nobody and the run's user, whose home is its private /tmp."""
    users = [("root", 0, 0, "/root"), ("nobody", NOBODY, NOBODY, "/nonexistent")]
    groups = [("root", 0), ("nogroup", NOBODY)]
    if identity is not None and identity.uid not in (0, NOBODY):
        users.append((identity.user, identity.uid, identity.gid, "/tmp"))
        if identity.gid not in (0, NOBODY):
            groups.append((identity.group, identity.gid))
    passwd = "".join(f"{name}:x:{uid}:{gid}::{home}:/bin/sh\n" for name, uid, gid, home in users)
    group = "".join(f"{name}:x:{gid}:\n" for name, gid in groups)
    return passwd.encode(), group.encode()


def overlaps(path: str, others: Iterable[str]) -> str | None:
    """The first of `others` that `path` is, holds or lies inside, else None (paths made real first)."""
    real = os.path.realpath(path)
    for other in others:
        if _under(real, [other]) or _under(other, [real]):
            return other
    return None


def inside(path: str, roots: Iterable[str]) -> bool:
    """Whether the host path, made real, lies in one of `roots` (what the jail shows)."""
    return _under(os.path.realpath(path), roots)


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)
