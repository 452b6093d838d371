"""The gofer daemon with a test hook that makes a forbidden syscall: proves seccomp kills.

Run as ``python -m gofer9p.testing.gofer_with_hooks <gofer flags>``.  It is the real
:func:`gofer9p.daemon.run` with an ``after_confine`` callback that installs a SIGUSR1 handler; on
SIGUSR1 the confined process issues the syscall named by ``GOFER9P_TEST_FORBIDDEN_SYSCALL``:

* ``socket`` (default): ``socket(AF_INET, SOCK_STREAM)`` - a syscall not on the whitelist;
* ``fork``: ``clone`` without CLONE_THREAD - on the whitelist only with thread flags;
* ``ioctl``: ``ioctl(2, TIOCGWINSZ)`` - on the whitelist only with a few requests;
* ``setuid``: ``setuid(0)``;
* ``clone3``: must fail with ENOSYS, not kill (glibc's fallback to clone depends on it).

Under ``--seccomp=kill`` the process dies of SIGSYS; under ``log``/``off`` the call goes through (or
fails normally) and the hook writes ``hook: <name> survived <result>`` to stderr.

Two more hooks, each armed by its own variable, test the layers under seccomp:

* ``GOFER9P_TEST_ESCAPE=DIR``: the hook keeps a directory fd opened before confinement (a dup
  of the root attach point's own fd), and SIGUSR1 runs the classic chroot escape instead of
  the forbidden call: ``chroot(DIR)`` (the gofer keeps CAP_SYS_CHROOT; only seccomp refuses
  the call, so run it with ``--seccomp=off``), ``fchdir`` to the kept fd, now above the root,
  ``chdir("..")`` 64 times, then list ``.``: ``hook: escape reached ["name", ...]`` or
  ``hook: escape error EACCES`` on stderr.  Under plain chroot it lists the host's ``/``;
  under ``--setup-root`` the tmpfs root (``["root"]``); Landlock refuses the listing.
* ``GOFER9P_TEST_BYPASS_READONLY=1``: after confinement every attach point is marked
  read-write, so gofer9p's own read-only check (the connection core's) lets mutating
  requests through to the kernel: what stops them is Landlock (or a read-only mount).
* ``GOFER9P_TEST_STEADY_POLL=1``: the poll window's measurements (``getrusage`` for a
  preempted turn, the thread's CPU clock for a CPU trial) are still made, under seccomp,
  but read as "never preempted" and "no CPU spent": the window turns itself off only for
  misses, not because other processes load the host (a test of what the window catches
  would otherwise fail on a busy machine, where it rightly turns off).

(The first hooks are armed by SIGUSR1; the last two from the start.)

Why a separate module: the release path (``gofer9p gofer``, ``python -m gofer9p.daemon``) has no flag
and reads no environment variable that could arm this; only running this module does, and a
sandbox manager never runs it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from gofer9p import daemon

if TYPE_CHECKING:
    from gofer9p.attach import AttachPoint

ENV = "GOFER9P_TEST_FORBIDDEN_SYSCALL"
ESCAPE_ENV = "GOFER9P_TEST_ESCAPE"
BYPASS_ENV = "GOFER9P_TEST_BYPASS_READONLY"
STEADY_POLL_ENV = "GOFER9P_TEST_STEADY_POLL"
_SYS_CLONE3 = 435
_TIOCGWINSZ = 0x5413


def _forbidden(name: str) -> str:
    if name == "socket":
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        return "ok"
    if name == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return "ok"
    if name == "ioctl":
        fcntl.ioctl(2, _TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        return "ok"
    if name == "setuid":
        os.setuid(0)
        return "ok"
    if name == "clone3":
        libc = ctypes.CDLL(None, use_errno=True)
        # clone3(NULL, 0): EINVAL if the kernel saw it, ENOSYS if the filter answered.
        r = libc.syscall(_SYS_CLONE3, None, 0)
        return f"{r} {errno.errorcode.get(ctypes.get_errno(), '?')}"
    raise ValueError(f"unknown {ENV} value {name!r}")


def _escape(subdir: str, held: int) -> str:
    """chroot(subdir), then climb from ``held`` (now above the root) and list what is there."""
    os.chroot(subdir)
    os.fchdir(held)
    for _ in range(64):
        os.chdir("..")
    return "reached " + json.dumps(sorted(os.listdir(".")))


def steady_poll() -> None:
    """``GOFER9P_TEST_STEADY_POLL`` (see the module doc): the measuring functions of
    :mod:`gofer9p._quietwait` make their system calls and report nothing (also called by
    tests that start ``gofer9p serve`` through ``python -c``)."""
    from gofer9p import _quietwait

    switches, cpu_ns = _quietwait._switches, _quietwait._cpu_ns

    def never_preempted() -> int:
        switches()
        return 0

    def no_cpu() -> int:
        cpu_ns()
        return 0

    _quietwait._switches = never_preempted
    _quietwait._cpu_ns = no_cpu


def armed_hook() -> Callable[[], None]:
    """The ``after_confine`` callback: install the SIGUSR1 handler that makes the call (or
    the escape); with the variables above, also keep the attach points as the daemon opens
    them (:func:`gofer9p.daemon._open_attach_points`, before confinement)."""
    if os.environ.get(STEADY_POLL_ENV) == "1":
        steady_poll()
    name = os.environ.get(ENV, "socket")
    escape_dir = os.environ.get(ESCAPE_ENV, "")
    bypass = os.environ.get(BYPASS_ENV) == "1"
    ctypes.CDLL(None)  # load now: after the chroot, dlopen could not find libc
    points: list[AttachPoint] = []
    held: list[int] = []
    if escape_dir or bypass:
        opened = daemon._open_attach_points

        def keeping(*args: Any, **kw: Any) -> list[AttachPoint]:
            got = opened(*args, **kw)
            points[:] = got
            if escape_dir:
                held.append(os.dup(got[0].fd))  # the root's fd: inside the root, for now
            return got

        daemon._open_attach_points = keeping

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        what = "escape" if escape_dir else name
        try:
            result = _escape(escape_dir, held[0]) if escape_dir else _forbidden(name)
        except OSError as e:
            result = f"error {errno.errorcode.get(e.errno or 0, e.errno)}"
        os.write(2, f"hook: {what} survived {result}\n".encode())

    def after_confine() -> None:
        for p in points if bypass else ():
            p.readonly = False
        signal.signal(signal.SIGUSR1, on_usr1)

    return after_confine


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon with the SIGUSR1 hook armed after confinement."""
    return daemon.run(argv, after_confine=armed_hook())


if __name__ == "__main__":
    sys.exit(main())
