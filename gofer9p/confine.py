"""Confine the gofer process: private mounts, chroot, capabilities, no_new_privs.

The gofer talks to an untrusted sandbox, so after setup it keeps only what serving files needs
(design.md §1).  Order matters and is the daemon's job: ``private_mount_root`` (needs
CAP_SYS_ADMIN) -> ``chroot_into`` (CAP_SYS_CHROOT) -> open the attach points ->
``drop_capabilities`` -> ``set_no_new_privs`` -> ``seccomp.install_seccomp`` (the filter and
its table live in :mod:`gofer9p.seccomp`; the raw calls in :mod:`gofer9p.syscalls`).

Capabilities are **per thread** on Linux and a new thread copies its creator's; a seccomp filter
is inherited the same way.  So everything here must run while the process has exactly one thread,
before trio starts any worker thread: :func:`assert_single_threaded` checks that, and the filter
is also loaded with TSYNC so that a thread we did not know about could not escape it.

``prctl`` (python-prctl) and ``pyseccomp`` are imported lazily: importing pyseccomp runs
``ldconfig -p`` to find libseccomp, which the error paths of the daemon should not pay for.  Both
must be imported (see :func:`preload`) *before* the chroot: the library files are not inside it.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from . import syscalls
from .seccomp import SeccompMode, compile_seccomp
from .syscalls import (
    AT_FDCWD,
    AT_RECURSIVE,
    CLONE_NEWNS,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_NOSYMFOLLOW,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_NOSYMFOLLOW,
    MS_PRIVATE,
    MS_REC,
    MS_REMOUNT,
    ST_NODEV,
    ST_NOSUID,
)

__all__ = [
    "KEEP_CAPS",
    "KEEP_CAPS_MASK",
    "ConfineError",
    "assert_single_threaded",
    "chroot_into",
    "drop_capabilities",
    "preload",
    "private_mount_root",
    "set_no_new_privs",
    "set_not_dumpable",
]

#: The capabilities the gofer keeps (numbers from linux/capability.h), as gVisor's gofer does:
#: CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID act on files for the sandbox's users;
#: SYS_CHROOT is kept as gVisor keeps it; it cannot be used for the classic chroot-in-chroot
#: escape because chroot(2) is not on the seccomp whitelist.
KEEP_CAPS: tuple[int, ...] = (0, 1, 2, 3, 4, 18)
KEEP_CAPS_MASK = sum(1 << c for c in KEEP_CAPS)  # 0x4001f

_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_DUMPABLE = 4


class ConfineError(Exception):
    """A confinement step failed; ``str(err)`` is one line for stderr."""


def preload(seccomp_mode: SeccompMode = "kill", *, apply_caps: bool = True) -> None:
    """Import the native libraries now, while the host's filesystem is still visible.

    prctl is needed even with ``apply_caps=False``: no_new_privs is always set.  The seccomp
    program is compiled now too (:func:`compile_seccomp`).
    """
    import prctl  # noqa: F401

    syscalls.libc()
    _cap_last_cap()
    if seccomp_mode != "off":
        compile_seccomp(seccomp_mode)


def assert_single_threaded() -> None:
    """Raise :class:`ConfineError` unless this process has exactly one thread.

    Reads ``/proc/self/task`` when it is visible (before the chroot) and always checks Python's own
    count, so a stray thread cannot keep full capabilities or run unfiltered.
    """
    if threading.active_count() != 1:
        raise ConfineError(f"{threading.active_count()} Python threads exist before confinement")
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return  # inside the chroot: no /proc; the Python count above is what we have
    if len(tasks) != 1:
        raise ConfineError(f"{len(tasks)} threads exist before confinement")


def _step(what: str, call: Callable[..., None], *args: object) -> None:
    """Run one confinement syscall; its failure is :class:`ConfineError` ``"what: strerror"``."""
    try:
        call(*args)
    except OSError as e:
        raise ConfineError(f"{what}: {os.strerror(e.errno or 0)}") from None


def private_mount_root(root: str) -> str:
    """Serve ``root`` from a private, recursively nodev+nosuid+nosymfollow copy of its mounts.

    The gofer gets its own mount namespace (nothing it does is seen by the host, and host
    mount events no longer reach it), bind-mounts ``root`` onto itself recursively and sets
    MOUNT_ATTR_NODEV|NOSUID|NOSYMFOLLOW on the whole tree with mount_setattr(2):

    * nodev: opening a device node fails with EACCES.  attach/ never opens devices on purpose,
      but its verified re-open by name has a window in which a node renamed over a name could
      be opened; on a nodev mount that open has no effect.
    * nosymfollow: the kernel refuses to follow any symlink inside the served trees, backing
      up attach/'s one-component O_NOFOLLOW walks.
    * nosuid: nothing there is ever executed by us; cheap to state.

    On kernels without mount_setattr (< 5.12) only the top mount is remounted (not its
    submounts).  Returns the real path chroot must use.  Needs CAP_SYS_ADMIN (root, or the
    root of a user namespace) and a single thread.
    """
    real = os.path.realpath(root)
    _step("unshare(CLONE_NEWNS)", syscalls.unshare, CLONE_NEWNS)
    _step("making mounts private", syscalls.mount, None, "/", None, MS_REC | MS_PRIVATE)
    _step(f"bind-mounting {real!r}", syscalls.mount, real, real, None, MS_BIND | MS_REC)
    nodev = MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOSYMFOLLOW
    try:
        syscalls.mount_setattr(AT_FDCWD, real, AT_RECURSIVE, nodev)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise ConfineError(f"mount_setattr {real!r}: {os.strerror(e.errno or 0)}") from None
        have = os.statvfs(real).f_flag & 0xF  # keep ro/nosuid/nodev/noexec it already has
        flags = MS_REMOUNT | MS_BIND | MS_NODEV | MS_NOSUID | MS_NOSYMFOLLOW | have
        _step(f"remounting {real!r} nodev", syscalls.mount, None, real, None, flags)
    got = os.statvfs(real).f_flag
    if got & (ST_NODEV | ST_NOSUID) != ST_NODEV | ST_NOSUID:
        raise ConfineError(f"{real!r} is not nodev,nosuid after remount (flags {got:#x})")
    return real


def chroot_into(root: str) -> None:
    """``umask(0)``; ``chroot(root)``; ``chdir("/")``.

    umask 0 because the client sends full modes in Tlcreate/Tmkdir and the host must apply them
    unchanged (the sandbox's own umask was already applied by its kernel).
    """
    os.umask(0)
    try:
        os.chroot(root)
    except OSError as e:
        raise ConfineError(f"chroot {root!r}: {e.strerror}") from None
    os.chdir("/")


def _cap_last_cap() -> int:
    """The kernel's highest capability number, read once (:func:`preload` reads it before the
    chroot, where ``/proc`` is out of reach; a fork-server's children inherit it)."""
    if not _last_cap:
        try:
            with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
                _last_cap.append(int(f.read()))
        except OSError:
            return 63  # drop every possible bit; PR_CAPBSET_DROP of an unknown cap is EINVAL
    return _last_cap[0]


_last_cap: list[int] = []


def drop_capabilities(keep: tuple[int, ...] = KEEP_CAPS) -> None:
    """Keep exactly ``keep`` in the effective, permitted and bounding sets of this thread.

    The inheritable and ambient sets are cleared, so nothing survives an exec (which seccomp also
    forbids).  The bounding set goes first: dropping from it needs CAP_SETPCAP, which the later
    steps remove.  python-prctl knows only the caps its libcap knew, so the bounding set is dropped
    up to the running kernel's ``cap_last_cap`` with raw prctl(2), and the three sets are
    limited with one capget(2) and one capset(2) (python-prctl's three ``limit`` calls took
    ~0.35 ms of a gofer's start).
    """
    try:
        for cap in range(_cap_last_cap() + 1):
            if cap in keep:
                continue
            try:
                syscalls.prctl(_PR_CAPBSET_DROP, cap)
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: cap unknown to this kernel
                    raise
        try:
            syscalls.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError as e:
            if e.errno != errno.EINVAL:  # kernels before 4.3 have no ambient set
                raise
        syscalls.limit_capabilities(sum(1 << c for c in keep))
    except OSError as e:
        raise ConfineError(f"dropping capabilities: {e.strerror or e}") from None


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: no exec can ever grant privileges again (and seccomp requires it)."""
    import prctl

    try:
        prctl.set_no_new_privs(1)
    except OSError as e:
        raise ConfineError(f"PR_SET_NO_NEW_PRIVS: {e.strerror or e}") from None



def set_not_dumpable() -> None:
    """PR_SET_DUMPABLE 0: no process of our uid may ptrace us or open our /proc/PID/mem & co.

    Gofers run as the same uid as their siblings and their manager (or fork-server): without
    CAP_SYS_PTRACE, "same uid" alone would let one read another's memory through ptrace or
    ``/proc/PID/mem``; a non-dumpable process refuses both (and leaves no core dump of what it
    served).  seccomp forbids changing it back (prctl allows only PR_SET_NAME/PR_GET_NAME).
    """
    try:
        syscalls.prctl(_PR_SET_DUMPABLE, 0)
    except OSError as e:
        raise ConfineError(f"PR_SET_DUMPABLE: {e.strerror or e}") from None
