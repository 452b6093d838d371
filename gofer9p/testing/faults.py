"""Fault injection for the fuzz harness: the server's syscalls fail on a seeded schedule.

A well-behaved host never makes the server's error and clean-up paths run: a pipe or an fd
refused at the fd limit, a splice the socket refuses, an fstat that fails right after the open
it follows, a close that reports EIO.  :func:`apply` makes them run, in the process it is
called in: in the gofer9p modules that make syscalls (``gofer9p.server`` and every
``gofer9p.attach`` module) it swaps the ``os`` and ``fcntl`` names, the names bound to ``os``
functions (``_close = os.close``) and the ``attach._sys`` wrappers for versions that fail some
calls with an errno the call can really return; :func:`faulty_socket` does the same for the
send, receive and option calls on a connection's socket.

Which calls fail is a function of the request being handled, not of time or of call order
across connections: a call fails when a hash of (the schedule's seed, the request's frame
bytes salted with the connection's Tversion frame, the call's name, how many calls of that
name the request made before, not counting calls that found the socket not ready) falls
under the rate.  So replaying the same frames fails the same calls, and minimizing a finding
keeps its faults.  Calls made outside a request (opening the attach point, a connection's
start) never fail.  A request is marked by a subclass of the connection core whose dispatch-table
entries set a context variable (a request's worker thread and the sends after it see it too).

Nothing in the release code imports this module, and there is no flag, option or environment
variable that turns it on in a gofer: the fuzz harness's ``fault`` target (fuzz/targets.py:
the in-process server, in the fuzzer's own process) calls :func:`apply`, and the returned
function undoes it.  Calls that make fds fail before the call (no fd is made); ``close`` of
a regular file open for writing fails after closing, as Linux does (the fd is gone whatever
close reports; other fds' closes never fail).  EINTR is never injected: ``os`` retries it
(PEP 475), so a server never sees it.
"""

from __future__ import annotations

import contextvars
import errno as E
import fcntl
import hashlib
import importlib
import os
import pkgutil
import socket
import stat
import threading
import types
import zlib
from collections.abc import Callable
from typing import Any

from gofer9p.connection import ConnectionCore
from gofer9p.protocol.constants import MsgType
from gofer9p.testing import require_interpreted

_FD = (E.EMFILE, E.ENFILE, E.ENOMEM, E.EACCES, E.EIO)
_IO = (E.EIO, E.EAGAIN, E.EINVAL, E.ENOSPC, E.EFBIG)
_META = (E.EIO, E.ENOMEM, E.EACCES, E.ENOSPC, E.EPERM)

OS_CALLS: dict[str, tuple[int, ...]] = {
    "open": _FD, "pipe2": _FD, "pipe": _FD, "dup": _FD, "scandir": _FD,
    "read": _IO, "readv": _IO, "pread": _IO, "preadv": _IO, "write": _IO, "pwrite": _IO,
    "splice": (E.EINVAL, E.EIO, E.ENOMEM, E.EPIPE), "sendfile": _IO,
    "fstat": _META, "stat": _META, "lstat": _META, "statvfs": _META, "readlink": _META,
    "listxattr": _META, "getxattr": (*_META, E.ERANGE), "setxattr": _META,
    "removexattr": _META, "lseek": (E.EIO, E.EINVAL, E.EOVERFLOW), "ftruncate": _META,
    "fsync": (E.EIO, E.ENOSPC), "fdatasync": (E.EIO, E.ENOSPC), "fchmod": _META,
    "fchown": _META, "mkdir": _META, "mknod": _META, "unlink": _META, "rmdir": _META,
    "rename": _META, "link": _META, "symlink": _META, "close": (E.EIO,),
}
"""The ``os`` functions made to fail, with the errnos each may fail with."""

FCNTL_CALLS: dict[str, tuple[int, ...]] = {"fcntl": (E.EIO, E.ENOLCK, E.EPERM, E.EBUSY)}

SYS_CALLS: dict[str, tuple[int, ...]] = {
    "utimensat": _META, "futimens": _META, "fchown_empty": _META,
    "fchmod_empty": (E.ENOSYS, *_META), "file_handle": (E.EOPNOTSUPP, E.EPERM, E.EIO),
    "open_by_handle": (E.ESTALE, E.EPERM, *_FD), "fs_magic": _META, "birth_time": _META,
}
"""The ``gofer9p.attach._sys`` wrappers made to fail (``DirentBuffer.fill`` too)."""

AFTER = frozenset({"close"})
"""Calls that fail after doing their work (see the module doc)."""

DEFAULT_RATE = 0.03
_TVERSION = MsgType.TVERSION

QUIET = "quiet"
"""Connections whose name starts with this see no fault (the harness's own checks: a
liveness check or a latency probe must succeed; its failing would be no finding)."""


class _Request:
    """The request a call is made for: its frame's hash and the calls it made so far."""

    __slots__ = ("counts", "key")

    def __init__(self, key: int) -> None:
        self.key = key
        self.counts: dict[str, int] = {}


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "gofer9p_fault_request", default=None
)


class Schedule:
    """Which calls fail: seeded, and a function of the request (see the module doc)."""

    def __init__(self, seed: int, rate: float) -> None:
        self.seed = seed
        self.rate = rate
        self.injected: dict[str, int] = {}
        """How many calls of each name were made to fail."""
        self._mu = threading.Lock()

    def errno_for(self, name: str, errnos: tuple[int, ...], scale: float = 1.0) -> int:
        """The errno the call ``name`` fails with now (at ``scale`` times the rate), or 0
        (it runs)."""
        req = _REQUEST.get()
        if req is None or self.rate <= 0:
            return 0
        n = req.counts.get(name, 0)
        req.counts[name] = n + 1
        h = hashlib.blake2b(f"{self.seed}/{req.key}/{name}/{n}".encode(), digest_size=8).digest()
        if int.from_bytes(h[:7], "little") >= self.rate * scale * (1 << 56):
            return 0
        return errnos[h[7] % len(errnos)]

    def uncount(self, name: str) -> None:
        """The last call of ``name`` did not happen as far as the schedule goes: it found
        the socket not ready (a real EAGAIN).  How many of those a request meets is a
        matter of timing (whether the client's next frame or the room to send had arrived
        yet, whether the poll window spun), so counting them would make the schedule a
        function of time: the same frames would fail different calls on a replay."""
        req = _REQUEST.get()
        if req is not None and self.rate > 0:
            req.counts[name] -= 1

    def count(self, name: str) -> None:
        """One more call of ``name`` failed."""
        with self._mu:
            self.injected[name] = self.injected.get(name, 0) + 1


def _faulty(schedule: Schedule, name: str, fn: Callable[..., Any],
            errnos: tuple[int, ...], scale: float = 1.0) -> Callable[..., Any]:
    after = name in AFTER

    def call(*args: Any, **kwargs: Any) -> Any:
        err = schedule.errno_for(name, errnos, scale)
        if not err:
            try:
                return fn(*args, **kwargs)
            except BlockingIOError:
                schedule.uncount(name)  # (not ready: timing, not the request; see uncount)
                raise
        if after:
            # Only the close of a file open for writing reports an error (a write-back
            # failure on NFS or FUSE); Linux never fails the close of an O_PATH fd, a
            # read-only one, a pipe, a socket or a directory.
            can_fail = _written_file(args[0])
            fn(*args, **kwargs)
            if not can_fail:
                return None
        schedule.count(name)
        raise OSError(err, f"{os.strerror(err)} (injected into {name})")

    call.__name__ = call.__qualname__ = name
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def _written_file(fd: int) -> bool:
    """Whether ``fd`` is a regular file opened for writing (not O_PATH)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    return bool(
        not flags & os.O_PATH
        and flags & os.O_ACCMODE != os.O_RDONLY
        and stat.S_ISREG(os.fstat(fd).st_mode)
    )


class _Proxy(types.ModuleType):
    """A module (``os``, ``fcntl``) whose named functions fail on the schedule; every other
    name is the real module's."""

    def __init__(self, real: types.ModuleType, calls: dict[str, Callable[..., Any]]) -> None:
        super().__init__(real.__name__)
        self._real = real
        self.__dict__.update(calls)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


SOCKET_CALLS: dict[str, tuple[int, ...]] = {
    "send": (E.EAGAIN, E.EAGAIN, E.EPIPE, E.ECONNRESET, E.ENOBUFS),
    "sendmsg": (E.EAGAIN, E.EAGAIN, E.EPIPE, E.ECONNRESET, E.ENOBUFS),
    "recv_into": (E.EAGAIN, E.EAGAIN, E.ECONNRESET),
    "setsockopt": (E.ENOBUFS, E.EPERM),
}
"""The connection socket's calls made to fail (:func:`faulty_socket`).  EAGAIN is a full
or empty socket (the server waits and tries again); the others end the connection."""

SOCKET_SCALE = 0.25
"""Socket calls fail at this fraction of the rate: most of their errors end the
connection, and a connection that always ends early reaches little."""


def faulty_socket(schedule: Schedule, sock: socket.socket) -> socket.socket:
    """``sock`` (detached) as a socket whose :data:`SOCKET_CALLS` fail on ``schedule``: the
    server's send, receive and option calls on a connection that breaks or fills."""

    class FaultySocket(socket.socket):
        __slots__ = ()

    for name, errnos in SOCKET_CALLS.items():
        call = _faulty(schedule, name, getattr(socket.socket, name), errnos, SOCKET_SCALE)
        setattr(FaultySocket, name, call)
    return FaultySocket(fileno=sock.detach())


def _modules() -> list[types.ModuleType]:
    """The modules whose syscalls fail: ``gofer9p.server`` and every ``gofer9p.attach`` one."""
    import gofer9p.attach

    mods = [importlib.import_module("gofer9p.server")]
    for info in pkgutil.iter_modules(gofer9p.attach.__path__):
        mods.append(importlib.import_module(f"gofer9p.attach.{info.name}"))
    return mods


def apply(seed: int, rate: float = DEFAULT_RATE) -> tuple[Schedule, Callable[[], None]]:
    """Make the server's syscalls in this process fail on a schedule; return the schedule
    (its ``injected`` counts) and a function that undoes it all."""
    from gofer9p import server
    from gofer9p.attach import _sys

    mods = _modules()
    require_interpreted(mods, "the fault target")
    schedule = Schedule(seed, rate)
    undo: list[Callable[[], None]] = []

    def patch(obj: Any, attr: str, new: Any) -> None:
        old = getattr(obj, attr)
        setattr(obj, attr, new)
        undo.append(lambda: setattr(obj, attr, old))

    os_calls = {n: _faulty(schedule, n, getattr(os, n), e) for n, e in OS_CALLS.items()}
    fcntl_calls = {n: _faulty(schedule, n, getattr(fcntl, n), e) for n, e in FCNTL_CALLS.items()}
    sys_calls = {n: _faulty(schedule, n, getattr(_sys, n), e) for n, e in SYS_CALLS.items()}
    # by identity: a module's own name for a real function (``_close = os.close``)
    by_id: dict[int, Callable[..., Any]] = {id(getattr(os, n)): f for n, f in os_calls.items()}
    by_id.update({id(getattr(fcntl, n)): f for n, f in fcntl_calls.items()})
    by_id.update({id(getattr(_sys, n)): f for n, f in sys_calls.items()})
    os_proxy, fcntl_proxy = _Proxy(os, os_calls), _Proxy(fcntl, fcntl_calls)
    for mod in mods:
        for attr, value in list(vars(mod).items()):
            if value is os:
                patch(mod, attr, os_proxy)
            elif value is fcntl:
                patch(mod, attr, fcntl_proxy)
            elif id(value) in by_id and callable(value):
                patch(mod, attr, by_id[id(value)])
    fill = _sys.DirentBuffer.fill
    patch(_sys.DirentBuffer, "fill", _faulty(schedule, "getdents64", fill, (E.EIO, E.ENOMEM)))

    # A core whose table entries mark the request their calls are made for (a subclass of
    # the one the server makes now: a planted defect's, gofer9p.testing.plant, if any).
    base: type[ConnectionCore] = vars(server)["ConnectionCore"]

    class FaultyCore(base):  # type: ignore[valid-type,misc]
        # The connection's last Tversion frame salts its requests' keys: one request fails
        # alike on every connection that negotiated the same way, and differently on others.
        salt = 0

        def _request(self, frame: memoryview) -> _Request | None:
            if self.name.startswith(QUIET):
                return None
            return _Request(zlib.crc32(frame, self.salt))

        def _build_table(self) -> dict[int, Callable[[int, memoryview], Any]]:
            def marked(
                entry: Callable[[int, memoryview], Any]
            ) -> Callable[[int, memoryview], Any]:
                def mark(tag: int, frame: memoryview) -> Any:
                    _REQUEST.set(self._request(frame))
                    return entry(tag, frame)

                return mark

            return {t: marked(e) for t, e in super()._build_table().items()}

        def handle(self, mtype: int, tag: int, frame: memoryview) -> Any:
            if mtype == _TVERSION:
                self.salt = zlib.crc32(frame)
            _REQUEST.set(self._request(frame))
            return super().handle(mtype, tag, frame)

    patch(server, "ConnectionCore", FaultyCore)

    def remove() -> None:
        for u in reversed(undo):
            u()

    return schedule, remove


__all__ = ["DEFAULT_RATE", "QUIET", "Schedule", "apply", "faulty_socket"]
