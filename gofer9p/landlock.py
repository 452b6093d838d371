"""Landlock: the gofer restricts itself to its attach points' trees (the third layer).

chroot (or ``--setup-root``'s pivoted root) decides what the gofer can *name*; seccomp what
system calls it can make; Landlock what files it can *open and change*, by the kernel's own
path hierarchy, whatever fd or name an open starts from.  After setup the gofer allows itself
read access beneath every attach point, write access beneath the read-write ones only, and
nothing anywhere else: a write to a read-only attach point is refused by the kernel (EACCES)
even if gofer9p's own read-only check (``gofer9p.connection``) were bypassed, and a directory
fd that somehow points outside the served trees opens nothing there.

What the served operations need, and so what a read-write point gets (``_WRITE``):
WRITE_FILE (Twrite, Tlopen for writing), MAKE_REG/DIR/SYM/FIFO/SOCK/CHAR/BLOCK (Tlcreate,
Tmkdir, Tsymlink, Tmknod: device nodes also need CAP_MKNOD, which the gofer does not keep, so
the kernel answers EPERM as without Landlock), REMOVE_FILE/DIR (Tunlinkat, Tremove), REFER
(ABI 2: Trename/Trenameat/Tlink across directories; without it the kernel refuses every
cross-directory rename once any right is handled, so ABI 1 is used only when no point is
read-write), TRUNCATE (ABI 3: Tsetattr SIZE, Tlopen O_TRUNC).  Read: READ_FILE, READ_DIR.
Never granted: EXECUTE (the gofer never executes), IOCTL_DEV (ABI 5: it never opens device
nodes).  Not covered by Landlock at all (checked by the attach layer and the mount flags
only): chmod, chown, utimes, xattrs, stat, readlink, locks.  Also handled with no rule, so
always refused: TCP bind/connect (ABI 4), and signals and abstract unix sockets leaving the
domain (ABI 6 scopes).

Rules are unions up the tree: a read-only attach point nested inside a read-write one (a
``ro`` mount under a writable root) is writable as far as Landlock goes; there the read-only
bind mount (:func:`gofer9p.launch.setup_fs`, ``--setup-root``) is what the kernel enforces.

Landlock checks at open time: fds opened before :func:`restrict` keep what they had, which is
why the rules name the attach points' own fds.  It applies to the calling thread and the
threads it starts later, so it runs while the process has one thread, after no_new_privs
(restrict_self needs it) and before seccomp (whose whitelist has no landlock calls).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from typing import Literal

from . import syscalls

__all__ = ["LandlockError", "LandlockMode", "abi", "handled", "make_ruleset", "restrict", "rights"]

LandlockMode = Literal["auto", "require", "off"]

log = logging.getLogger("gofer9p")

# LANDLOCK_ACCESS_FS_* (linux/landlock.h), with the ABI that brought each.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
# LANDLOCK_ACCESS_NET_BIND_TCP | CONNECT_TCP (ABI 4); LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET |
# SIGNAL (ABI 6).
_NET_ALL, _SCOPE_ALL = 0b11, 0b11

_READ = READ_FILE | READ_DIR
_WRITE = (
    WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_CHAR
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_BLOCK
    | MAKE_SYM
    | REFER
    | TRUNCATE
)
#: The rights that mean something beneath a regular file (a file attach point).
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV


class LandlockError(Exception):
    """Landlock could not be enforced where it was required; ``str(err)`` is one line."""


def abi() -> int:
    """The running kernel's Landlock ABI version; 0 without Landlock.  Asked once per process
    tree (a fork-server asks before it forks, see ``forkserver._preload``)."""
    if not _abi:
        _abi.append(syscalls.landlock_abi())
    return _abi[0]


_abi: list[int] = []


def handled(version: int) -> int:
    """Every filesystem right ABI ``version`` knows (all of them are handled: what a rule
    does not grant is refused)."""
    return _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= version)]


def rights(readonly: bool, is_dir: bool, version: int) -> int:
    """What an attach point gets beneath it: read, plus write when read-write, cut to what
    the ABI knows and to what applies beneath a file when it is one."""
    allowed = (_READ if readonly else _READ | _WRITE) & handled(version)
    return allowed if is_dir else allowed & _FILE_RIGHTS


def restrict(
    points: Sequence[tuple[int, bool, bool]], mode: LandlockMode, version: int | None = None
) -> str:
    """Enforce the attach points' rules on this process; a few words for the ready line.

    ``points``: ``(fd, readonly, is_dir)`` of each attach point (its root fd: ``O_PATH`` is
    enough).  ``mode`` ``off``: nothing.  ``auto``: on a kernel without Landlock (or one too
    old to allow what read-write points need) one line is logged and the gofer goes on;
    ``require``: that is :class:`LandlockError`.  A failure of a kernel that has Landlock is
    always :class:`LandlockError` (it would be a bug, not a missing feature).
    """
    if mode == "off":
        return "landlock off"
    v = abi() if version is None else version
    why = unavailable(points, mode, v)
    if why:
        log.warning("%s: going on without it (--landlock=require makes this fatal)", why)
        return "landlock unavailable"
    ruleset = make_ruleset(points, v)
    try:
        syscalls.landlock_restrict_self(ruleset)
    except OSError as e:
        why = "no_new_privs is not set" if e.errno == errno.EPERM else str(e.strerror)
        raise LandlockError(f"landlock: {why}") from None
    finally:
        os.close(ruleset)
    return f"landlock ABI {v} ({len(points)} rules)"


def unavailable(points: Sequence[tuple[int, bool, bool]], mode: LandlockMode, version: int) -> str:
    """Why Landlock (ABI ``version``) cannot fence ``points`` ("" if it can): with ``mode``
    ``require`` that is :class:`LandlockError`.  :func:`restrict` asks; a forked gofer asks
    before it says ``ok`` too, so that this failure, which depends on its request, is still
    its one error line to the requester (:class:`gofer9p.daemon.StartReport`)."""
    why = ""
    if version == 0:
        why = "this kernel has no Landlock"
    elif version < 2 and any(not ro for _, ro, _ in points):
        why = "Landlock ABI 1 would refuse renames across directories on read-write points"
    if why and mode == "require":
        raise LandlockError(f"--landlock=require: {why}")
    return why


def make_ruleset(points: Sequence[tuple[int, bool, bool]], version: int) -> int:
    """The ruleset fd :func:`restrict` enforces (ABI ``version`` >= 1), not yet enforced:
    creating one has no effect on the process (a fork-server's pre-forked child builds one
    to warm the path up, then closes it)."""
    size = 24 if version >= 6 else 16 if version >= 4 else 8
    try:
        ruleset = syscalls.landlock_create_ruleset(
            handled(version),
            _NET_ALL if version >= 4 else 0,
            _SCOPE_ALL if version >= 6 else 0,
            size,
        )
    except OSError as e:
        raise LandlockError(f"landlock: {e.strerror}") from None
    try:
        for fd, ro, is_dir in points:
            syscalls.landlock_add_path_rule(ruleset, rights(ro, is_dir, version), fd)
    except OSError as e:
        os.close(ruleset)
        raise LandlockError(f"landlock: {e.strerror}") from None
    return ruleset
