"""Raw Linux system calls of the host glue (mounts, namespaces, prctl, seccomp, Landlock), through ctypes.

``os`` has no mount(2), umount2(2), unshare(2), mount_setattr(2), pivot_root(2), seccomp(2),
the landlock_*(2) calls, and no prctl(2)
with the raw options confinement needs (PR_CAPBSET_DROP up to the running kernel's last cap,
PR_CAP_AMBIENT, PR_SET_DUMPABLE).  confine.py, seccomp.py, launch.py and forkserver.py call them
here, with their numbers and flags written once.  libc is loaded once, before any chroot (the
library file is outside it; a fork-server's children inherit the handle): :func:`libc`.

Every wrapper raises ``OSError(errno, ...)`` on failure, its ``strerror`` naming the call
(``"mount SRC on TARGET: Permission denied"``) so that a caller that reports it as is still
says what failed.

attach/ keeps its own ``*at`` helpers (``gofer9p/attach/_sys.py``): they are the file
operations a client's requests become, which design.md §2 keeps inside attach/, the one layer
that touches served files; nothing here is reachable from a client request.
"""

from __future__ import annotations

import ctypes
import os
import struct

__all__ = [
    "AT_EMPTY_PATH",
    "AT_FDCWD",
    "AT_RECURSIVE",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "LANDLOCK_CREATE_RULESET_VERSION",
    "MNT_DETACH",
    "MOUNT_ATTR_NODEV",
    "MOUNT_ATTR_NOSUID",
    "MOUNT_ATTR_NOSYMFOLLOW",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_NOSYMFOLLOW",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_SET_MODE_FILTER",
    "ST_NODEV",
    "ST_NOSUID",
    "SYS_MOUNT_SETATTR",
    "landlock_abi",
    "landlock_add_path_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "libc",
    "limit_capabilities",
    "mount",
    "mount_setattr",
    "pivot_root",
    "prctl",
    "seccomp_set_filter",
    "umount",
    "unshare",
]

# mount(2) flags (linux/mount.h).  statvfs's ST_RDONLY/NOSUID/NODEV/NOEXEC have the same values
# as the first four, and so do mount_setattr's MOUNT_ATTR_RDONLY/NOSUID/NODEV/NOEXEC.
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOSYMFOLLOW, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x100, 0x1000, 0x4000, 1 << 18
MNT_DETACH = 0x2
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSYMFOLLOW = 0x2, 0x4, 0x200000
ST_NOSUID, ST_NODEV = 0x2, 0x4
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
# unshare(2) / clone(2) namespace flags.
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
# Same number on every architecture (the generic syscall table, Linux 5.12); seccomp(2)'s own
# number differs per architecture, so its callers pass the one libseccomp resolved.
SYS_MOUNT_SETATTR = 442
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
# Landlock (Linux 5.13+): the same numbers on every architecture (generic table).
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
#: pivot_root(2) has no libc wrapper, and its number differs per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_CLONE_NAMES = {CLONE_NEWNS: "CLONE_NEWNS", CLONE_NEWUSER: "CLONE_NEWUSER"}

_handle: list[ctypes.CDLL] = []


def libc() -> ctypes.CDLL:
    """The C library, loaded once with errno kept and the wrappers' argument types declared."""
    if not _handle:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,  # data: the file system's option string
        ]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.unshare.argtypes = [ctypes.c_int]
        lib.syscall.restype = ctypes.c_long
        _handle.append(lib)
    return _handle[0]


def _fail(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    """mount(2) (``data``: the file system's options, e.g. tmpfs's ``mode=0755``);
    ``OSError("mount SOURCE on TARGET: ...")`` on failure."""
    if libc().mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        raise _fail(f"mount {source or ''} on {target}")


def umount(target: str) -> None:
    """umount2(target, MNT_DETACH): the mount goes now, its users keep what they hold."""
    if libc().umount2(_b(target), MNT_DETACH) != 0:
        raise _fail(f"umount {target}")


def unshare(flags: int) -> None:
    """unshare(2).  Safe between fork and exec: libc is already loaded and nothing allocates
    in C (a failure raises, which a pre-exec function turns into its exit code)."""
    if libc().unshare(flags) != 0:
        raise _fail(f"unshare({_CLONE_NAMES.get(flags, hex(flags))})")


def mount_setattr(dirfd: int, path: str, at_flags: int, attr_set: int) -> None:
    """mount_setattr(2) setting ``attr_set`` (MOUNT_ATTR_*) and clearing nothing.

    ENOSYS on kernels before 5.12: callers fall back to a bind remount.
    """
    attr = ctypes.create_string_buffer(struct.pack("=QQQQ", attr_set, 0, 0, 0))
    r = libc().syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.c_uint(at_flags),
        attr,
        ctypes.c_size_t(32),
    )
    if r != 0:
        raise _fail("mount_setattr")


def prctl(option: int, arg2: int, arg3: int = 0) -> None:
    """prctl(2) with integer arguments; ``OSError("prctl(OPTION): ...")`` on failure."""
    if libc().prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), 0, 0) != 0:
        raise _fail(f"prctl({option})")


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def limit_capabilities(keep_mask: int) -> None:
    """This thread's effective and permitted sets ``&= keep_mask``, inheritable emptied: one
    capget(2) and one capset(2).  Never adds a capability the thread lacks."""
    lib = libc()
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)  # pid 0: this thread
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}: caps 0-31, 32-63
    if lib.capget(header, data) != 0:
        raise _fail("capget")
    for half in (0, 1):
        word = (keep_mask >> (32 * half)) & 0xFFFFFFFF
        data[3 * half] &= word
        data[3 * half + 1] &= word
        data[3 * half + 2] = 0
    if lib.capset(header, data) != 0:
        raise _fail("capset")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(nr: int, prog: bytes, flags: int) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, flags, prog): load a BPF program (8 bytes a rule).

    ``nr`` is seccomp(2)'s number on this architecture.  With SECCOMP_FILTER_FLAG_TSYNC a
    positive return is the id of a thread that could not be synchronised: OSError(0, ...).
    """
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    r = libc().syscall(
        ctypes.c_long(nr),
        ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
        ctypes.c_uint(flags),
        ctypes.byref(fprog),
    )
    if r < 0:
        raise _fail("seccomp")
    if r > 0:
        raise OSError(0, f"seccomp: thread {r} could not be synchronised")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): ``new_root`` becomes this mount namespace's root, the old root goes to
    ``put_old`` (``"."`` for both: the old root is stacked on the new one, to be detached)."""
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"pivot_root: unknown on {os.uname().machine}")
    if libc().syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)) != 0:
        raise _fail(f"pivot_root {new_root}")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (1, 2, ...); 0 when it has none (ENOSYS: not built
    in; EOPNOTSUPP: built in but not enabled at boot)."""
    r = libc().syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )
    if r < 0:
        e = ctypes.get_errno()
        if e in (38, 95):  # ENOSYS, EOPNOTSUPP
            return 0
        raise OSError(e, f"landlock_create_ruleset(VERSION): {os.strerror(e)}")
    return int(r)


def landlock_create_ruleset(handled_fs: int, handled_net: int, scoped: int, size: int) -> int:
    """A new Landlock ruleset (an fd) handling these rights.  ``size`` is how much of
    ``struct landlock_ruleset_attr`` the running ABI knows: 8 (fs only, ABI 1-3), 16 (+ net,
    ABI 4-5), 24 (+ scoped, ABI 6+); the fields past it must be 0."""
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", handled_fs, handled_net, scoped))
    r = libc().syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), attr, ctypes.c_size_t(size), ctypes.c_uint32(0)
    )
    if r < 0:
        raise _fail("landlock_create_ruleset")
    return int(r)


def landlock_add_path_rule(ruleset_fd: int, allowed: int, parent_fd: int) -> None:
    """Allow ``allowed`` (LANDLOCK_ACCESS_FS_*) beneath the file or directory ``parent_fd``
    (an O_PATH fd is enough): a LANDLOCK_RULE_PATH_BENEATH rule."""
    attr = ctypes.create_string_buffer(struct.pack("=Qi", allowed, parent_fd), 12)
    r = libc().syscall(
        ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
        ctypes.c_int(ruleset_fd),
        ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
        attr,
        ctypes.c_uint32(0),
    )
    if r != 0:
        raise _fail("landlock_add_rule")


def landlock_restrict_self(ruleset_fd: int, flags: int = 0) -> None:
    """Enforce the ruleset on this thread (and the threads it starts later), for good.
    Needs no_new_privs (or CAP_SYS_ADMIN)."""
    r = libc().syscall(
        ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset_fd), ctypes.c_uint32(flags)
    )
    if r != 0:
        raise _fail("landlock_restrict_self")
