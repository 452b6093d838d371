"""The gofer's seccomp policy: one table, syscall -> rules, and the one function that loads it.

Read :data:`POLICY` to know what a confined gofer may do (as gVisor's
``runsc/fsgofer/filter/config.go``).  A syscall maps to its rules; a rule is an action and the
argument conditions under which it applies (all must hold).  :data:`ALLOW` allows any arguments.
A syscall absent from the table gets the mode's default action: ``kill`` kills the whole process
with SIGSYS (SCMP_ACT_KILL_PROCESS), ``log`` allows it and has the kernel log it (to find gaps).
A syscall unknown to the installed libseccomp (too old for it) is skipped.

Keep the table tight: every entry is reachable by a hostile client only through our own code,
but the filter is what limits a bug in that code.  The table is the whole policy: the filter is
built from it by :func:`_build_filter` alone, and tests/daemon/test_seccomp_table.py checks the
loaded program against it, rule by rule.

Compiling (libseccomp) costs milliseconds, so :func:`compile_seccomp` caches the program (a
fork-server compiles it once for all its children); tgkill's "our own pid" is the only
per-process value: it is compiled as :data:`OWN_PID` and written in by :func:`install_seccomp`.
pyseccomp is imported lazily: importing it runs ``ldconfig -p``, which the daemon's error paths
should not pay for; it must be imported before the chroot (see ``confine.preload``).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import struct
from typing import Any, Literal, NamedTuple

from . import syscalls

__all__ = [
    "ALLOW",
    "EQ",
    "MASKED_EQ",
    "OWN_PID",
    "POLICY",
    "SECCOMP_ERRNO_RULES",
    "SECCOMP_MODES",
    "Arg",
    "Rule",
    "SeccompError",
    "SeccompMode",
    "compile_seccomp",
    "install_seccomp",
    "prepare_seccomp",
    "syscall_whitelist",
]

SeccompMode = Literal["kill", "log", "off"]
SECCOMP_MODES: tuple[SeccompMode, ...] = ("kill", "log", "off")


class SeccompError(Exception):
    """The filter could not be compiled or loaded; ``str(err)`` is one line for stderr."""


class Op(enum.Enum):
    """How an argument is compared (libseccomp's SCMP_CMP_EQ and SCMP_CMP_MASKED_EQ)."""

    EQ = "=="
    MASKED_EQ = "& mask =="


EQ, MASKED_EQ = Op.EQ, Op.MASKED_EQ


class Arg(NamedTuple):
    """Argument ``argno`` equals ``value`` (``MASKED_EQ``: after ``& mask``)."""

    argno: int
    op: Op
    value: int
    mask: int = 0


class Rule(NamedTuple):
    """Apply ``errno`` (0: allow) when every condition in ``args`` holds."""

    args: tuple[Arg, ...] = ()
    errno: int = 0


#: Any arguments allowed.
ALLOW: tuple[Rule, ...] = (Rule(),)

#: Stands for the calling process's pid in :data:`POLICY`; no other constant of the filter has
#: this value (install_seccomp checks it writes exactly one).
OWN_PID = 0x7EADBEEF


def _allow_if(*args: Arg) -> Rule:
    return Rule(args)


def _answer(err: int, *args: Arg) -> Rule:
    return Rule(args, err)


def _one_of(index: int, values: tuple[int, ...], mask: int = 0) -> tuple[Rule, ...]:
    op = MASKED_EQ if mask else EQ
    return tuple(Rule((Arg(index, op, v, mask),)) for v in values)


_AF_UNIX = 1
_SOCK_CLOEXEC = 0o2000000
# fcntl commands: fd flags, status flags, dup, POSIX and OFD record locks, F_SETPIPE_SZ (1031:
# the splice pipe).  Not F_SETOWN/F_SETSIG/F_SETLEASE/F_NOTIFY & co., which would let a bug aim
# signals or leases at other processes.  F_DUPFD .. F_SETLKW, F_SETPIPE_SZ/F_GETPIPE_SZ,
# F_OFD_GETLK .. F_OFD_SETLKW.
_FCNTL_CMDS = (0, 1, 2, 3, 4, 5, 6, 7, 1030, 1031, 36, 37, 38)
# ioctl requests: TCGETS (isatty, from io.open), FIONREAD, FIONBIO (socket.setblocking),
# FIONCLEX/FIOCLEX.  The request is an int: compared on its low 32 bits.
_IOCTL_REQS = (0x5401, 0x541B, 0x5421, 0x5450, 0x5451)
# clone(2) is allowed only for threads: these bits must be exactly the thread set (VM, FS,
# FILES, SIGHAND, THREAD), which also rules out every CLONE_NEW* namespace flag.
_CLONE_THREAD_FLAGS = 0x00000100 | 0x00000200 | 0x00000400 | 0x00000800 | 0x00010000
_CLONE_NS_FLAGS = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
_CLONE_NS_FLAGS |= 0x20000000 | 0x40000000
# prctl(2): naming the calling thread (trio names its workers with pthread_setname_np) and
# reading the name back: PR_SET_NAME, PR_GET_NAME.
_PR_SET_NAME, _PR_GET_NAME = 15, 16

# fmt: off
#: The policy: syscall name -> rules, in the order they are added to the filter.
POLICY: dict[str, tuple[Rule, ...]] = {
    # attach/: every file operation is an *at call relative to a held fd
    "openat": ALLOW, "close": ALLOW, "read": ALLOW, "write": ALLOW, "readv": ALLOW,
    "writev": ALLOW, "pread64": ALLOW, "pwrite64": ALLOW, "preadv": ALLOW, "pwritev": ALLOW,
    "preadv2": ALLOW, "pwritev2": ALLOW,
    "lseek": ALLOW, "fstat": ALLOW, "newfstatat": ALLOW, "statx": ALLOW, "getdents64": ALLOW,
    "fsync": ALLOW, "fdatasync": ALLOW, "ftruncate": ALLOW, "truncate": ALLOW,
    "fallocate": ALLOW,
    "fchmod": ALLOW, "fchmodat": ALLOW, "fchmodat2": ALLOW, "fchown": ALLOW, "fchownat": ALLOW,
    "utimensat": ALLOW,
    "mkdirat": ALLOW, "mknodat": ALLOW, "symlinkat": ALLOW, "readlinkat": ALLOW,
    "linkat": ALLOW, "renameat": ALLOW, "renameat2": ALLOW,
    "unlinkat": ALLOW, "faccessat": ALLOW, "faccessat2": ALLOW, "fstatfs": ALLOW,
    "statfs": ALLOW,
    "getxattr": ALLOW, "lgetxattr": ALLOW, "fgetxattr": ALLOW, "listxattr": ALLOW,
    "llistxattr": ALLOW, "flistxattr": ALLOW,
    "setxattr": ALLOW, "lsetxattr": ALLOW, "fsetxattr": ALLOW, "removexattr": ALLOW,
    "lremovexattr": ALLOW, "fremovexattr": ALLOW,
    "flock": ALLOW, "dup": ALLOW, "dup3": ALLOW,
    # server.py / trio: the epoll loop, its wakeup pair, the inherited stream sockets
    "epoll_create1": ALLOW, "epoll_ctl": ALLOW, "epoll_wait": ALLOW, "epoll_pwait": ALLOW,
    "epoll_pwait2": ALLOW,
    "poll": ALLOW, "ppoll": ALLOW, "select": ALLOW, "pselect6": ALLOW, "eventfd2": ALLOW,
    "pipe2": ALLOW,
    "recvfrom": ALLOW, "recvmsg": ALLOW, "sendto": ALLOW, "sendmsg": ALLOW, "shutdown": ALLOW,
    "splice": ALLOW,  # mid-sized Treads: file -> pipe -> socket
    "getsockopt": ALLOW, "setsockopt": ALLOW, "getsockname": ALLOW, "getpeername": ALLOW,
    # memory (CPython's allocator, glibc malloc arenas, thread stacks)
    "mmap": ALLOW, "munmap": ALLOW, "mprotect": ALLOW, "madvise": ALLOW, "brk": ALLOW,
    "mremap": ALLOW,
    # threads (trio.to_thread workers) and their synchronisation
    "futex": ALLOW, "set_robust_list": ALLOW, "rseq": ALLOW, "gettid": ALLOW, "getpid": ALLOW,
    "sched_yield": ALLOW,
    "sched_getaffinity": ALLOW, "exit": ALLOW, "exit_group": ALLOW, "restart_syscall": ALLOW,
    # signals (trio's signal receiver, Python's handlers)
    "rt_sigaction": ALLOW, "rt_sigprocmask": ALLOW, "rt_sigreturn": ALLOW, "sigaltstack": ALLOW,
    # time and randomness (usually vDSO; the syscalls are the fallback)
    "clock_gettime": ALLOW, "clock_getres": ALLOW, "clock_nanosleep": ALLOW,
    "nanosleep": ALLOW, "gettimeofday": ALLOW, "getrandom": ALLOW,
    # small process queries CPython and glibc make
    "uname": ALLOW, "getuid": ALLOW, "geteuid": ALLOW, "getgid": ALLOW, "getegid": ALLOW,
    "sysinfo": ALLOW, "getcwd": ALLOW,
    # the quiet wait's check that its poll window is not spinning on the CPU its client
    # needs (getrusage(RUSAGE_THREAD).ru_nivcsw, _quietwait.py; perf17, issue #17)
    "getrusage": ALLOW,
    # --- with argument rules ---
    "fcntl": _one_of(1, _FCNTL_CMDS),
    "ioctl": _one_of(1, _IOCTL_REQS, mask=0xFFFFFFFF),
    "clone": (_allow_if(Arg(0, MASKED_EQ, _CLONE_THREAD_FLAGS, _CLONE_THREAD_FLAGS
                             | _CLONE_NS_FLAGS)),),
    "socketpair": (_allow_if(Arg(0, EQ, _AF_UNIX)),),
    "prctl": _one_of(0, (_PR_SET_NAME, _PR_GET_NAME)),
    # Only at ourselves: with the same uid as its siblings (and its fork-server or manager),
    # tgkill(other_pid, ...) or prlimit64(other_pid, ...) would reach another process.
    # pthread_kill/raise pass our own tgid; getrlimit/setrlimit pass pid 0.
    "tgkill": (_allow_if(Arg(0, EQ, OWN_PID)),),
    "prlimit64": (_allow_if(Arg(0, EQ, 0)),),
    # stats (control.py): accepting a client on the --stats-fd listener the manager bound;
    # CPython's socket.accept passes exactly SOCK_CLOEXEC.  The io fds are connected
    # sockets, on which accept fails (EINVAL); the gofer makes no listener of its own
    # (socket() is refused below).
    "accept4": (_allow_if(Arg(3, EQ, _SOCK_CLOEXEC)),),
    # --- answered with an errno, never run ---
    # glibc's user lookups (Tattach by user name) first try nscd / systemd-userdb over a unix
    # socket; make that fail softly so they fall back to the chroot's /etc/passwd.  Any other
    # socket() gets the default action.
    "socket": (_answer(errno.EACCES, Arg(0, EQ, _AF_UNIX)),),
    # File handles: with CAP_DAC_READ_SEARCH (which we keep), open_by_handle_at opens *any*
    # inode of a file system by number, chroot or not (the "shocker" escape), so a compromised
    # gofer must not have it.  EPERM makes attach/ fall back to its verified re-open by name.
    "name_to_handle_at": (_answer(errno.EPERM),),
    "open_by_handle_at": (_answer(errno.EPERM),),
    # Its flags live in memory a filter cannot read: ENOSYS makes glibc fall back to clone(2),
    # whose flags the rule above checks.
    "clone3": (_answer(errno.ENOSYS),),
}
# fmt: on


def syscall_whitelist() -> list[str]:
    """Every syscall name the filter can allow (some only with restricted arguments)."""
    return sorted(name for name, rules in POLICY.items() if any(not r.errno for r in rules))


def _describe(rules: tuple[Rule, ...]) -> str:
    parts = []
    for r in rules:
        cond = " and ".join(
            f"arg{a.argno} == {a.value:#x}"
            if a.op is EQ
            else f"arg{a.argno} & {a.mask:#x} == {a.value:#x}"
            for a in r.args
        )
        parts.append(errno.errorcode[r.errno] + (f" if {cond}" if cond else ""))
    return "; ".join(parts)


#: Syscalls the filter answers with an errno instead of running them: name -> what it answers
#: (derived from :data:`POLICY`; scripts/syscalls.sh prints it).
SECCOMP_ERRNO_RULES: dict[str, str] = {
    name: _describe(rules)
    for name, rules in POLICY.items()
    if all(r.errno for r in rules)
}


def install_seccomp(mode: SeccompMode) -> int:
    """Load :data:`POLICY` into this process (every thread: TSYNC); return how many syscalls
    it allows (0 for ``off``, which loads nothing).

    The program comes from :func:`prepare_seccomp` (:func:`compile_seccomp`'s with our pid
    written in for :data:`OWN_PID`), and is loaded with seccomp(2), as libseccomp's own
    ``seccomp_load`` would.
    """
    if mode == "off":
        return 0
    if mode not in SECCOMP_MODES:
        raise SeccompError(f"unknown seccomp mode {mode!r}")
    prog, allowed, nr = prepare_seccomp(mode)
    try:
        syscalls.seccomp_set_filter(nr, prog, syscalls.SECCOMP_FILTER_FLAG_TSYNC)
    except OSError as e:
        raise SeccompError(f"installing seccomp filter: {e.strerror}") from None
    return allowed


_BPF_JMP_JEQ_K = 0x15


def own_pid_written(prog: bytes, pid: int) -> bytes:
    """``prog`` with the one comparison against :data:`OWN_PID` comparing against ``pid``."""
    insns = bytearray(prog)
    patched = 0
    for off in range(0, len(insns), 8):
        code, _jt, _jf, k = struct.unpack_from("=HBBI", insns, off)
        if k == OWN_PID and code == _BPF_JMP_JEQ_K:
            struct.pack_into("=I", insns, off + 4, pid)
            patched += 1
    if patched != 1:
        raise SeccompError(f"seccomp program: found {patched} pid comparisons, expected 1")
    return bytes(insns)


def prepare_seccomp(mode: SeccompMode) -> tuple[bytes, int, int]:
    """:func:`compile_seccomp`'s ``(program, allowed, nr)`` with this process's pid written in,
    cached per pid.

    A fork-server's pre-forked child prepares it while it waits, so its gofer only loads it
    (writing the pid in is a Python loop over the program, ~0.1 ms of a start); a process
    forked later has another pid and prepares its own.
    """
    pid = os.getpid()
    got = _prepared.get((mode, pid))
    if got is not None:
        return got
    prog, allowed, nr = compile_seccomp(mode)
    _prepared.clear()  # only this pid's programs are of any use
    _prepared[(mode, pid)] = (own_pid_written(prog, pid), allowed, nr)
    return _prepared[(mode, pid)]


_prepared: dict[tuple[str, int], tuple[bytes, int, int]] = {}
_compiled: dict[str, tuple[bytes, int, int]] = {}


def compile_seccomp(mode: SeccompMode) -> tuple[bytes, int, int]:
    """``(BPF program, allowed count, seccomp syscall number)`` for ``mode``, cached."""
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
        raise SeccompError(f"compiling seccomp filter: {e.strerror or e}") from None
    nr = _resolve(sc, "seccomp")
    if nr is None or not prog or len(prog) % 8:
        raise SeccompError("compiling seccomp filter: no usable program")
    _compiled[mode] = (prog, allowed, nr)
    return _compiled[mode]


def _build_filter(sc: Any, mode: SeccompMode) -> tuple[Any, int]:
    """:data:`POLICY` as a libseccomp filter (not loaded), and how many syscalls it allows."""
    f = sc.SyscallFilter(sc.KILL_PROCESS if mode == "kill" else sc.LOG)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_TSYNC, 1)
    f.set_attr(sc.Attr.CTL_NNP, 1)
    # A binary tree of syscall numbers instead of a linear list: the same rules, about 0.1 ms
    # less for the kernel to check and prepare at load (a gofer's start) and fewer
    # instructions per filtered syscall.  libseccomp before 2.5 lacks it: linear list then.
    with contextlib.suppress(AttributeError, OSError, RuntimeError, ValueError):
        f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    ops = {EQ: sc.EQ, MASKED_EQ: sc.MASKED_EQ}
    allowed = 0
    for name, rules in POLICY.items():
        if _resolve(sc, name) is None:
            continue
        for rule in rules:
            action = sc.ERRNO(rule.errno) if rule.errno else sc.ALLOW
            args = [
                sc.Arg(a.argno, ops[a.op], a.mask, a.value)
                if a.op is MASKED_EQ
                else sc.Arg(a.argno, ops[a.op], a.value)
                for a in rule.args
            ]
            f.add_rule(action, name, *args)
        allowed += any(not r.errno for r in rules)
    return f, allowed


def _resolve(sc: Any, name: str) -> int | None:
    nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
    return None if nr < 0 else int(nr)
