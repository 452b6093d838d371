"""Confine the gofer process: chroot, capabilities, no_new_privs, seccomp.

The gofer talks to an untrusted sandbox, so after setup it keeps only what serving files needs
(design.md §1).  Order matters and is the daemon's job: ``private_mount_root`` (needs
CAP_SYS_ADMIN) -> ``chroot_into`` (CAP_SYS_CHROOT) -> open the attach points ->
``drop_capabilities`` -> ``set_no_new_privs`` -> ``install_seccomp``.

Capabilities are **per thread** on Linux and a new thread copies its creator's; a seccomp filter
is inherited the same way.  So everything here must run while the process has exactly one thread,
before trio starts any worker thread: :func:`assert_single_threaded` checks that, and the filter
is also loaded with TSYNC so that a thread we did not know about could not escape it.

``prctl`` (python-prctl) and ``pyseccomp`` are imported lazily: importing pyseccomp runs
``ldconfig -p`` to find libseccomp, which the error paths of the daemon should not pay for.  Both
must be imported (see :func:`preload`) *before* the chroot: the library files are not inside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import ctypes

__all__ = [
    "KEEP_CAPS",
    "KEEP_CAPS_MASK",
    "SECCOMP_ERRNO_RULES",
    "SECCOMP_MODES",
    "ConfineError",
    "SeccompMode",
    "assert_single_threaded",
    "chroot_into",
    "compile_seccomp",
    "drop_capabilities",
    "install_seccomp",
    "preload",
    "prepare_seccomp",
    "private_mount_root",
    "set_no_new_privs",
    "set_not_dumpable",
    "syscall_whitelist",
]

SeccompMode = Literal["kill", "log", "off"]
SECCOMP_MODES: tuple[SeccompMode, ...] = ("kill", "log", "off")

#: The capabilities the gofer keeps (numbers from linux/capability.h), as gVisor's gofer does:
#: CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID act on files for the sandbox's users;
#: SYS_CHROOT is kept as gVisor keeps it; it cannot be used for the classic chroot-in-chroot
#: escape because chroot(2) is not on the seccomp whitelist.
KEEP_CAPS: tuple[int, ...] = (0, 1, 2, 3, 4, 18)
KEEP_CAPS_MASK = sum(1 << c for c in KEEP_CAPS)  # 0x4001f

_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


class ConfineError(Exception):
    """A confinement step failed; ``str(err)`` is one line for stderr."""


def preload(seccomp_mode: SeccompMode = "kill", *, apply_caps: bool = True) -> None:
    """Import the native libraries now, while the host's filesystem is still visible.

    prctl is needed even with ``apply_caps=False``: no_new_privs is always set.  The seccomp
    program is compiled now too (:func:`compile_seccomp`).
    """
    import prctl  # noqa: F401

    _libc()
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


_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOSYMFOLLOW = 0x2, 0x4, 0x100
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20, 0x1000, 0x4000, 1 << 18
_MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_NOSYMFOLLOW = 0x2, 0x4, 0x200000
_ST_NOSUID, _ST_NODEV, _ST_NOSYMFOLLOW = 0x2, 0x4, 0x2000
_SYS_MOUNT_SETATTR = 442  # x86-64 and the generic table alike
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000


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
    import ctypes
    import struct

    real = os.path.realpath(root)
    libc = _libc()
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]

    def check(ret: int, what: str) -> None:
        if ret != 0:
            e = ctypes.get_errno()
            raise ConfineError(f"{what}: {os.strerror(e)}")

    b = real.encode()
    check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "making mounts private")
    check(libc.mount(b, b, None, _MS_BIND | _MS_REC, None), f"bind-mounting {real!r}")
    attr = ctypes.create_string_buffer(
        struct.pack(
            "=QQQQ", _MOUNT_ATTR_NODEV | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NOSYMFOLLOW, 0, 0, 0
        )
    )
    libc.syscall.restype = ctypes.c_long
    r = libc.syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR),
        ctypes.c_int(_AT_FDCWD),
        ctypes.c_char_p(b),
        ctypes.c_uint(_AT_RECURSIVE),
        attr,
        ctypes.c_size_t(32),
    )
    if r != 0:
        if ctypes.get_errno() != errno.ENOSYS:
            check(-1, f"mount_setattr {real!r}")
        have = os.statvfs(real).f_flag & 0xF  # keep ro/nosuid/nodev/noexec it already has
        flags = _MS_REMOUNT | _MS_BIND | _MS_NODEV | _MS_NOSUID | _MS_NOSYMFOLLOW | have
        check(libc.mount(None, b, None, flags, None), f"remounting {real!r} nodev")
    got = os.statvfs(real).f_flag
    if got & (_ST_NODEV | _ST_NOSUID) != _ST_NODEV | _ST_NOSUID:
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


_libc_handle: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    """libc, loaded once (before the chroot; a fork-server's children inherit it)."""
    if not _libc_handle:
        import ctypes

        _libc_handle.append(ctypes.CDLL(None, use_errno=True))
    return _libc_handle[0]


def _libc_prctl(option: int, arg2: int, arg3: int = 0) -> None:
    import ctypes

    libc = _libc()
    if libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def drop_capabilities(keep: tuple[int, ...] = KEEP_CAPS) -> None:
    """Keep exactly ``keep`` in the effective, permitted and bounding sets of this thread.

    The inheritable and ambient sets are cleared, so nothing survives an exec (which seccomp also
    forbids).  The bounding set goes first: dropping from it needs CAP_SETPCAP, which the later
    steps remove.  python-prctl knows only the caps its libcap knew, so the bounding set is dropped
    up to the running kernel's ``cap_last_cap`` with raw prctl(2), and the three sets are
    limited with one capset(2).
    """
    import ctypes

    libc = _libc()
    try:
        for cap in range(_cap_last_cap() + 1):
            if cap in keep:
                continue
            if libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), ctypes.c_ulong(0), 0, 0) != 0:
                e = ctypes.get_errno()
                if e != errno.EINVAL:  # EINVAL: cap unknown to this kernel
                    raise OSError(e, os.strerror(e))
        try:
            _libc_prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError as e:
            if e.errno != errno.EINVAL:  # kernels before 4.3 have no ambient set
                raise
        _limit_capsets(sum(1 << c for c in keep))
    except OSError as e:
        raise ConfineError(f"dropping capabilities: {e.strerror or e}") from None


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _limit_capsets(keep_mask: int) -> None:
    """effective &= keep, permitted &= keep, inheritable = 0, in one capget and one capset
    (python-prctl's three ``limit`` calls did the same in ~0.35 ms of a gofer's start)."""
    import ctypes

    libc = _libc()
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)  # pid 0: this thread
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}: caps 0-31, 32-63
    if libc.capget(header, data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"capget: {os.strerror(e)}")
    for half in (0, 1):
        word = (keep_mask >> (32 * half)) & 0xFFFFFFFF
        data[3 * half] &= word
        data[3 * half + 1] &= word
        data[3 * half + 2] = 0
    if libc.capset(header, data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"capset: {os.strerror(e)}")


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: no exec can ever grant privileges again (and seccomp requires it)."""
    import prctl

    try:
        prctl.set_no_new_privs(1)
    except OSError as e:
        raise ConfineError(f"PR_SET_NO_NEW_PRIVS: {e.strerror or e}") from None


_PR_SET_DUMPABLE = 4


def set_not_dumpable() -> None:
    """PR_SET_DUMPABLE 0: no process of our uid may ptrace us or open our /proc/PID/mem & co.

    Gofers run as the same uid as their siblings and their manager (or fork-server): without
    CAP_SYS_PTRACE, "same uid" alone would let one read another's memory through ptrace or
    ``/proc/PID/mem``; a non-dumpable process refuses both (and leaves no core dump of what it
    served).  seccomp forbids changing it back (prctl allows only PR_SET_NAME/PR_GET_NAME).
    """
    try:
        _libc_prctl(_PR_SET_DUMPABLE, 0)
    except OSError as e:
        raise ConfineError(f"PR_SET_DUMPABLE: {e.strerror or e}") from None


# --- seccomp ---------------------------------------------------------------------------------

# Syscalls allowed with any arguments.  Grouped by who needs them; a syscall unknown to the
# installed libseccomp (too old for it) is skipped.  Keep this list tight: every entry is reachable
# by a hostile client only through our own code, but the filter is what limits a bug in that code.
# fmt: off
_ALLOW: tuple[str, ...] = (
    # attach/: every file operation is an *at call relative to a held fd
    "openat", "close", "read", "write", "readv", "writev",
    "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "lseek", "fstat", "newfstatat", "statx", "getdents64",
    "fsync", "fdatasync", "ftruncate", "truncate", "fallocate",
    "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "utimensat",
    "mkdirat", "mknodat", "symlinkat", "readlinkat", "linkat", "renameat", "renameat2",
    "unlinkat", "faccessat", "faccessat2", "fstatfs", "statfs",
    "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "flock", "dup", "dup3",
    # server.py / trio: the epoll loop, its wakeup pair, the inherited stream sockets
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "poll", "ppoll", "select", "pselect6", "eventfd2", "pipe2",
    "recvfrom", "recvmsg", "sendto", "sendmsg", "shutdown",
    "splice",  # mid-sized Treads: file -> pipe -> socket (server.py, Connection._read)
    "getsockopt", "setsockopt", "getsockname", "getpeername",
    # memory (CPython's allocator, glibc malloc arenas, thread stacks)
    "mmap", "munmap", "mprotect", "madvise", "brk", "mremap",
    # threads (trio.to_thread workers) and their synchronisation
    "futex", "set_robust_list", "rseq", "gettid", "getpid", "sched_yield",
    "sched_getaffinity", "exit", "exit_group", "restart_syscall",
    # signals (trio's signal receiver, Python's handlers)
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    # time and randomness (usually vDSO; the syscalls are the fallback)
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "getrandom",
    # small process queries CPython and glibc make
    "uname", "getuid", "geteuid", "getgid", "getegid", "sysinfo", "getcwd",
)
# fmt: on

# fcntl commands: fd flags, status flags, dup, POSIX and OFD record locks, F_SETPIPE_SZ (1031: the
# splice pipe).  Not F_SETOWN/F_SETSIG/F_SETLEASE/F_NOTIFY & co., which would let a bug aim signals
# or leases at other processes.
_FCNTL_CMDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 1030, 1031, 36, 37, 38)  # F_DUPFD .. F_OFD_SETLKW

# ioctl requests: TCGETS (isatty, from io.open), FIONREAD, FIONBIO (socket.setblocking),
# FIONCLEX/FIOCLEX.
_IOCTL_REQS: tuple[int, ...] = (0x5401, 0x541B, 0x5421, 0x5450, 0x5451)

# clone(2) is allowed only for threads: these bits must be exactly the thread set, which also
# rules out every CLONE_NEW* namespace flag.
_CLONE_THREAD_FLAGS = 0x00010000 | 0x00000100 | 0x00000200 | 0x00000400 | 0x00000800
_CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
_CLONE_NS_FLAGS |= 0x40000000 | 0x00000080
_CLONE_MASK = _CLONE_THREAD_FLAGS | _CLONE_NS_FLAGS

_AF_UNIX = 1
_HANDLE_CALLS = ("name_to_handle_at", "open_by_handle_at")

# prctl(2): only naming the calling thread (trio names its worker threads via
# pthread_setname_np), and reading the name back.
_PR_SET_NAME = 15
_PR_GET_NAME = 16


#: Syscalls the filter answers with an errno instead of running or killing (see install_seccomp).
SECCOMP_ERRNO_RULES: dict[str, str] = {
    "clone3": "ENOSYS",
    "name_to_handle_at": "EPERM",
    "open_by_handle_at": "EPERM",
    "socket": "EACCES for AF_UNIX (other families kill)",
}


def syscall_whitelist() -> list[str]:
    """Every syscall name the filter can allow (some only with restricted arguments)."""
    return sorted(
        {*_ALLOW, "fcntl", "ioctl", "clone", "socketpair", "prctl", "tgkill", "prlimit64"}
    )


def install_seccomp(mode: SeccompMode) -> int:
    """Load the whitelist filter into this process; return the number of syscalls it allows.

    ``kill``: anything else kills the whole process with SIGSYS (SCMP_ACT_KILL_PROCESS).
    ``log``: anything else is allowed and logged by the kernel (audit / dmesg), to find gaps.
    ``off``: nothing is loaded.

    clone3 returns ENOSYS: its flags live in memory a filter cannot read, and glibc then falls
    back to clone(2), whose flags we *can* check (threads only, no namespaces, no fork).
    socket(AF_UNIX) returns EACCES (see below); every other socket() kills.
    name_to_handle_at/open_by_handle_at return EPERM (see below).

    The program comes from :func:`prepare_seccomp` (:func:`compile_seccomp`'s, compiled once
    by a fork-server for all its children, with our pid written in) and is loaded with
    seccomp(2) and TSYNC, as libseccomp's own ``seccomp_load`` would.
    """
    if mode == "off":
        return 0
    if mode not in SECCOMP_MODES:
        raise ConfineError(f"unknown seccomp mode {mode!r}")
    import ctypes

    fprog, allowed, nr = prepare_seccomp(mode)
    lib = _libc()
    lib.syscall.restype = ctypes.c_long
    r = lib.syscall(
        ctypes.c_long(nr),
        ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_uint(_SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(fprog[0]),
    )
    if r != 0:
        e = ctypes.get_errno() if r < 0 else 0
        why = os.strerror(e) if e else f"thread {r} could not be synchronised"
        raise ConfineError(f"installing seccomp filter: {why}")
    return allowed


def prepare_seccomp(mode: SeccompMode) -> tuple[tuple[Any, Any], int, int]:
    """``((sock_fprog, its buffer), allowed count, seccomp syscall number)`` ready to load.

    :func:`compile_seccomp`'s program with this process's pid written in, as the ctypes
    ``struct sock_fprog`` seccomp(2) takes; cached per pid, so a fork-server's pre-forked
    child builds it while it waits and its gofer only loads it (the Python work here is
    ~0.3 ms of a start).  A child forked later has another pid and builds its own.
    """
    key = (mode, os.getpid())
    got = _prepared.get(key)
    if got is not None:
        return got
    import ctypes
    import struct

    prog, allowed, nr = compile_seccomp(mode)
    insns = bytearray(prog)
    patched = 0
    for off in range(0, len(insns), 8):
        code, _jt, _jf, k = struct.unpack_from("=HBBI", insns, off)
        if k == _PID_PLACEHOLDER and code == _BPF_JMP_JEQ_K:
            struct.pack_into("=I", insns, off + 4, os.getpid())
            patched += 1
    if patched != 1:
        raise ConfineError(f"seccomp program: found {patched} pid comparisons, expected 1")

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(bytes(insns), len(insns))
    fprog = SockFprog(len(insns) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _prepared.clear()  # only this pid's programs are of any use
    _prepared[key] = ((fprog, buf), allowed, nr)
    return _prepared[key]


_prepared: dict[tuple[str, int], tuple[tuple[Any, Any], int, int]] = {}


def compile_seccomp(mode: SeccompMode) -> tuple[bytes, int, int]:
    """``(BPF program, allowed count, seccomp syscall number)`` for ``mode``, cached.

    Generating the program is most of a filter's cost (milliseconds, in libseccomp); only
    tgkill's "our own pid" differs between processes, so it is compiled with a placeholder
    that :func:`install_seccomp` replaces.
    """
    got = _compiled.get(mode)
    if got is not None:
        return got
    import pyseccomp as sc

    try:
        f, allowed = _build_filter(sc, mode)
        fd = os.memfd_create("gofer9p-seccomp", os.MFD_CLOEXEC)
        try:
            with open(fd, "r+b", closefd=False) as out:
                f.export_bpf(out)
                out.seek(0)
                prog = out.read()
        finally:
            os.close(fd)
    except OSError as e:
        raise ConfineError(f"compiling seccomp filter: {e.strerror or e}") from None
    nr = _resolve(sc, "seccomp")
    if nr is None or not prog or len(prog) % 8:
        raise ConfineError("compiling seccomp filter: no usable program")
    _compiled[mode] = (prog, allowed, nr)
    return _compiled[mode]


_compiled: dict[str, tuple[bytes, int, int]] = {}
#: Stands for our pid in the compiled program (tgkill's first argument); no other constant
#: of the filter has this value (install_seccomp checks there is exactly one).
_PID_PLACEHOLDER = 0x7EADBEEF
_BPF_JMP_JEQ_K = 0x15
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1


def _build_filter(sc: Any, mode: SeccompMode) -> tuple[Any, int]:
    """The whitelist as a libseccomp filter (not loaded), and how many syscalls it allows."""
    default = sc.KILL_PROCESS if mode == "kill" else sc.LOG
    f = sc.SyscallFilter(default)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_TSYNC, 1)
    f.set_attr(sc.Attr.CTL_NNP, 1)
    # A binary tree of syscall numbers instead of a linear list: the same rules, about 0.1 ms
    # less for the kernel to check and prepare at load (a gofer's start) and fewer
    # instructions per filtered syscall.  libseccomp before 2.5 lacks it: linear list then.
    with contextlib.suppress(AttributeError, OSError, RuntimeError, ValueError):
        f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    allowed = 0
    for name in _ALLOW:
        if _resolve(sc, name) is None:
            continue
        f.add_rule(sc.ALLOW, name)
        allowed += 1
    for cmd in _FCNTL_CMDS:
        f.add_rule(sc.ALLOW, "fcntl", sc.Arg(1, sc.EQ, cmd))
    for req in _IOCTL_REQS:
        f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, req))
    f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_MASK, _CLONE_THREAD_FLAGS))
    f.add_rule(sc.ALLOW, "socketpair", sc.Arg(0, sc.EQ, _AF_UNIX))
    for opt in (_PR_SET_NAME, _PR_GET_NAME):
        f.add_rule(sc.ALLOW, "prctl", sc.Arg(0, sc.EQ, opt))
    # Only at ourselves: with the same uid as its siblings (and its fork-server or manager),
    # tgkill(other_pid, ...) or prlimit64(other_pid, ...) would reach another process.
    # pthread_kill/raise pass our own tgid; getrlimit/setrlimit pass pid 0.
    f.add_rule(sc.ALLOW, "tgkill", sc.Arg(0, sc.EQ, _PID_PLACEHOLDER))
    f.add_rule(sc.ALLOW, "prlimit64", sc.Arg(0, sc.EQ, 0))
    # glibc's user lookups (Tattach by user name) first try nscd / systemd-userdb over a
    # unix socket; make that fail softly so they fall back to the chroot's /etc/passwd.
    f.add_rule(sc.ERRNO(errno.EACCES), "socket", sc.Arg(0, sc.EQ, _AF_UNIX))
    # File handles: with CAP_DAC_READ_SEARCH (which we keep), open_by_handle_at opens *any*
    # inode of a file system by number, chroot or not (the "shocker" escape), so a
    # compromised gofer must not have it.  EPERM makes attach/ fall back to its verified
    # re-open by name (and stop trying handles).
    for name in _HANDLE_CALLS:
        f.add_rule(sc.ERRNO(errno.EPERM), name)
    allowed += 7
    if _resolve(sc, "clone3") is not None:
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return f, allowed


def _resolve(sc: object, name: str) -> int | None:
    nr = sc.resolve_syscall(sc.Arch.NATIVE, name)  # type: ignore[attr-defined]
    return None if nr < 0 else int(nr)
