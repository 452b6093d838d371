"""Planted defects, so each fuzz oracle can be shown to fire (tests/fuzz/test_oracles.py).

Nothing in the release code path imports this module.  A defect is planted only by running
``python -m gofer9p.testing.plant serve|gofer <flags>`` (the fuzz targets do that when given
``plant=...``), or by calling :func:`apply` in a test's own process; ``GOFER9P_TEST_PLANT`` names
the defects (comma-separated) for the ``-m`` entry point:

* ``leak``: every request keeps a 1 MiB buffer forever (the memory oracle must fire);
* ``fdleak``: every Tlopen also opens the process's root directory and never closes it (the fd
  oracle: the server's fd count must settle back once the connections are closed);
* ``follow``: a Treadlink also opens and reads what the link points at, following symlinks
  (the canary oracle of the host-side agent must fire when a link points outside the export);
* ``syscall``: a Tstatfs first creates an AF_INET socket, a syscall off the daemon's seccomp
  whitelist (the confined daemon target must report the SIGSYS and the request behind it);
* ``crash``: a Tstatfs raises an unexpected exception (an internal error: the log oracle and
  the crash bucketing must fire);
* ``deepleak``: the attach root's containment check leaves one fd open whenever it looks at a
  directory more than 64 levels below ``/`` (the fd oracle of the race fuzzer, whose clients
  work at the bottom of a 70-level chain, must fire);
* ``stall``: a Tstatfs blocks the event loop for ``STALL_S`` seconds (the latency oracle: another
  connection's round trips must stay within their deadline).

Why monkeypatching our own classes here and not flags in the server: the defects must stay out of
the hot paths and out of anything a sandbox manager can switch on.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import types
from collections.abc import Callable, Iterable
from typing import Any

from gofer9p.testing import require_interpreted

ENV = "GOFER9P_TEST_PLANT"
KEPT: list[bytearray] = []
"""What the ``leak`` defect keeps (module-level: never freed)."""
KEPT_FDS: list[int] = []
"""The fds the ``fdleak`` defect keeps open (closed only by :func:`apply`'s remover)."""

LEAK_BYTES = 1 << 20
STALL_S = 2.0


def _leak(patch: Callable[[Any, str, Any], None]) -> None:
    from gofer9p import server
    from gofer9p.connection import ConnectionCore

    def keep() -> None:
        buf = bytearray(LEAK_BYTES)
        buf[::4096] = b"x" * len(buf[::4096])  # touch every page: RSS, not just VSZ
        KEPT.append(buf)

    def leaky_entry(entry: Callable[[int, memoryview], Any]) -> Callable[[int, memoryview], Any]:
        def leaky(tag: int, frame: memoryview) -> Any:
            keep()
            return entry(tag, frame)

        return leaky

    # A subclass the server makes its cores from (not methods patched into ConnectionCore:
    # when mypyc compiled it, its own calls would not see them).
    class LeakyCore(ConnectionCore):
        def _build_table(self) -> dict[int, Callable[[int, memoryview], Any]]:
            return {t: leaky_entry(e) for t, e in super()._build_table().items()}

        def handle(self, mtype: int, tag: int, frame: memoryview) -> Any:
            keep()
            return super().handle(mtype, tag, frame)

    # every request: the table's entries, and what the guards send to handle
    patch(server, "ConnectionCore", LeakyCore)


def _fdleak(patch: Callable[[Any, str, Any], None]) -> None:
    # The backend's open, which every Tlopen reaches (the server's Tlopen entry calls it
    # without Session.lopen): patched in the class before a session binds it.
    from gofer9p.attach._io import FileIO

    open_ = FileIO.open

    def leaky_open(self: Any, fid: int, flags: int) -> Any:
        KEPT_FDS.append(os.open("/", os.O_PATH | os.O_CLOEXEC))
        return open_(self, fid, flags)

    patch(FileIO, "open", leaky_open)


def _follow(patch: Callable[[Any, str, Any], None]) -> None:
    from gofer9p.attach.session import Session

    readlink = Session.readlink

    def following(self: Any, m: Any) -> Any:
        r = readlink(self, m)
        try:
            # the defect: a path that came from the host, followed from the process's root
            fd = os.open(bytes(r.target), os.O_RDONLY | os.O_NONBLOCK)
            try:
                os.read(fd, 64)
            finally:
                os.close(fd)
        except OSError:
            pass
        return r

    patch(Session, "readlink", following)


def _statfs(patch: Callable[[Any, str, Any], None], kind: str) -> None:
    from gofer9p.attach.session import Session

    statfs = Session.statfs

    def bad_statfs(self: Any, m: Any) -> Any:
        if kind == "syscall":
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        elif kind == "stall":
            time.sleep(STALL_S)
        else:
            raise ZeroDivisionError("planted internal error")
        return statfs(self, m)

    patch(Session, "statfs", bad_statfs)


DEEP_LEVELS = 64


def _deepleak(patch: Callable[[Any, str, Any], None]) -> None:
    from gofer9p.attach._paths import Paths

    inside = Paths.__dict__["_inside"]
    up = b"/".join([b".."] * DEEP_LEVELS)

    def leaky(self: Any, dfd: int, dev: int = 0, ino: int = -1) -> bool:
        try:
            far, top = os.stat(up, dir_fd=dfd), os.stat(up + b"/..", dir_fd=dfd)
            if (far.st_dev, far.st_ino) != (top.st_dev, top.st_ino):  # not at "/" yet
                KEPT_FDS.append(os.open(up, os.O_PATH | os.O_CLOEXEC, dir_fd=dfd))
        except OSError:
            pass
        return bool(inside(self, dfd, dev, ino))

    patch(Paths, "_inside", leaky)


def apply(names: Iterable[str]) -> Callable[[], None]:
    """Plant the named defects in this process; return a function that removes them."""
    undo: list[Callable[[], None]] = []

    def patch(cls: Any, attr: str, new: Any) -> None:
        mod = cls if isinstance(cls, types.ModuleType) else sys.modules[cls.__module__]
        require_interpreted([mod], f"the planted defect {name!r}")
        old = cls.__dict__[attr]
        setattr(cls, attr, new)
        undo.append(lambda: setattr(cls, attr, old))

    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name == "leak":
            _leak(patch)
        elif name == "fdleak":
            _fdleak(patch)
        elif name == "follow":
            _follow(patch)
        elif name == "deepleak":
            _deepleak(patch)
        elif name in ("syscall", "crash", "stall"):
            _statfs(patch, name)
        else:
            raise ValueError(f"unknown planted defect {name!r}")

    def remove() -> None:
        for u in reversed(undo):
            u()
        KEPT.clear()
        while KEPT_FDS:
            os.close(KEPT_FDS.pop())

    return remove


def main(argv: list[str] | None = None) -> int:
    """``serve ...`` or ``gofer ...`` with the defects of ``$GOFER9P_TEST_PLANT`` planted."""
    args = list(sys.argv[1:] if argv is None else argv)
    apply(os.environ.get(ENV, "").split(","))
    if args[:1] == ["gofer"] or "--bundle" in args:  # launch.start_gofer(module=...) omits it
        from gofer9p import daemon

        return daemon.run(args[1:] if args[:1] == ["gofer"] else args)
    from gofer9p import cli

    return int(cli.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
