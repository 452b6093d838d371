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

Why a separate module: the release path (``gofer9p gofer``, ``python -m gofer9p.daemon``) has no flag
and reads no environment variable that could arm this; only running this module does, and a
sandbox manager never runs it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from gofer9p import daemon

ENV = "GOFER9P_TEST_FORBIDDEN_SYSCALL"
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


def armed_hook() -> Callable[[], None]:
    """The ``after_confine`` callback: install the SIGUSR1 handler that makes the call."""
    name = os.environ.get(ENV, "socket")
    ctypes.CDLL(None)  # load now: after the chroot, dlopen could not find libc

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        try:
            result = _forbidden(name)
        except OSError as e:
            result = f"error {errno.errorcode.get(e.errno or 0, e.errno)}"
        os.write(2, f"hook: {name} survived {result}\n".encode())

    def after_confine() -> None:
        signal.signal(signal.SIGUSR1, on_usr1)

    return after_confine


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon with the SIGUSR1 hook armed after confinement."""
    return daemon.run(argv, after_confine=armed_hook())


if __name__ == "__main__":
    sys.exit(main())
