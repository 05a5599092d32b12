"""A uid of its own for each command run of a root processor, from a range (as systemd's DynamicUser does).

A run takes a free uid of `TASKMILL_COMMAND_UIDS` (61184-65519 by default, systemd's own range) for as long as it
runs, with the group of the same number, and gives it back after. Free means: no account or group of the host has
that number (those are skipped), and no run holds it. Runs hold a uid with an exclusive lock on a file named for it
under /run/taskmill/uids, so several processors of one host never hand out the same uid; the kernel drops the lock
of a processor that dies. A uid owns nothing once its run is over: the run could write only its private /tmp
(gone with it), so the next run that gets the same number finds nothing of the last one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import random
import re
from dataclasses import dataclass
from pathlib import Path

# 0 is root; 65534 is nobody, what a user namespace shows for every id it does not map; 65535 is (uint16) -1.
_RESERVED = (0, 65534, 65535)
# Past 2**31 - 1 some tools take a uid for a negative number.
_HIGHEST = 2**31 - 2
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


class NoFreeUid(Exception):
    """Every uid of the range is held by a run (or belongs to an account)."""


@dataclass(frozen=True, slots=True)
class UidRange:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> UidRange:
        """`first-last`, inclusive; ValueError saying what is wrong."""
        match = _RANGE.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a range of uids like 61184-65519")
        first, last = int(match[1]), int(match[2])
        if not 1 <= first <= last <= _HIGHEST:
            raise ValueError(f"{text!r}: uids from 1 to {_HIGHEST}, the first no larger than the last")
        if reserved := [uid for uid in _RESERVED if first <= uid <= last]:
            raise ValueError(f"{text!r} holds {reserved[0]}, which stands for no user or for nobody")
        return cls(first, last)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __len__(self) -> int:
        return self.last - self.first + 1

    def accounts(self) -> set[int]:
        """The numbers in the range that an account or a group of the host has (never handed out)."""
        taken = {entry.pw_uid for entry in pwd.getpwall()} | {entry.gr_gid for entry in grp.getgrall()}
        return {n for n in taken if self.first <= n <= self.last}

    def take(self, locks: Path) -> UidLease:
        """A free uid, held until the lease is released (blocking: a few file operations, run it in a thread).

        Starts at a random place, so processors that start together do not contend for the same first uids.
        """
        locks.mkdir(mode=0o700, parents=True, exist_ok=True)
        size = len(self)
        start = random.randrange(size)
        for i in range(size):
            uid = self.first + (start + i) % size
            fd = os.open(locks / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if _is_account(uid):
                os.close(fd)
                continue
            return UidLease(uid, fd)
        raise NoFreeUid(f"every uid of TASKMILL_COMMAND_UIDS={self} is taken by a run or an account")


@dataclass(slots=True)
class UidLease:
    uid: int
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # drops the lock
            self._fd = -1


def _is_account(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


def check_uids(text: str) -> str:
    """Settings validator: the text parses as a range."""
    UidRange.parse(text)
    return text
