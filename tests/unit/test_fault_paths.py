"""Error paths found by the fault-injecting fuzz target (``--target fault``), one test each.

Each test makes one host call fail the way the fault target did (a monkeypatched call of
the attach layer) and checks the server's answer and what it leaves behind: a clean errno,
no fd left open.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sessionops import ROOT, err, lopen, walk

from gofer9p.attach import AttachPoint, Session
from gofer9p.protocol.constants import NOFID
from gofer9p.protocol.messages import Tattach


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Session]:
    (tmp_path / "f").write_bytes(b"data")
    point = AttachPoint.open(str(tmp_path))
    sess = Session(point)
    sess.attach(Tattach(1, ROOT, NOFID, b"", b"", 0))
    yield sess
    sess.reset()
    point.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reopen_by_name_closes_the_fd_when_its_fstat_fails(
    s: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tlopen re-opens a file by name (no file handles), then fstats the new fd to check it
    is the fid's inode: that fstat failing must not leave the new fd open (it did)."""
    from gofer9p.attach import _reopen

    monkeypatch.setitem(_reopen._handles_ok, "reopen", False)
    real = _reopen.fstat_ids
    opened: list[int] = []
    real_open = os.open

    def tracked_open(*a: Any, **kw: Any) -> int:
        fd = real_open(*a, **kw)
        opened.append(fd)
        return fd

    def failing_fstat(fd: int) -> tuple[int, int, int, int, int]:
        if fd in opened:
            raise OSError(errno.EIO, "injected")
        return real(fd)

    walk(s, 1, b"f")
    before = _fds()
    monkeypatch.setattr(_reopen.os, "open", tracked_open)
    monkeypatch.setattr(_reopen, "fstat_ids", failing_fstat)
    err(errno.EIO, lopen, s, 1)
    monkeypatch.undo()
    assert opened, "the re-open by name was not reached"
    assert _fds() == before, "the re-opened fd was left open"
    lopen(s, 1)  # and the fid can still be opened


def test_a_send_error_ends_the_connection_with_a_plain_oserror(tmp_path: Path) -> None:
    """A send that fails with ENOBUFS (a unix socket under memory pressure) ends that
    connection with the OSError itself, which the callers catch as one connection's I/O
    error (cli.py, daemon.py): it left run() inside an ExceptionGroup, past their
    ``except OSError``, and would have ended every other connection of the process."""
    import socket

    import trio

    from gofer9p.protocol import constants as C
    from gofer9p.protocol.codec import encode
    from gofer9p.protocol.messages import Tversion
    from gofer9p.server import Connection, ServerConfig

    class NoBufs(socket.socket):
        __slots__ = ()

        def send(self, *a: Any, **kw: Any) -> int:
            raise OSError(errno.ENOBUFS, "no buffer space")

        def sendmsg(self, *a: Any, **kw: Any) -> int:
            raise OSError(errno.ENOBUFS, "no buffer space")

    point = AttachPoint.open(str(tmp_path))
    a, b = socket.socketpair()
    server_end = NoBufs(fileno=a.detach())
    conn = Connection(server_end, point, ServerConfig(), "nobufs")
    b.sendall(encode(Tversion(C.NOTAG, 8192, C.VERSION_9P2000L)))
    raised: list[BaseException] = []

    async def main() -> None:
        try:
            await conn.run()
        except BaseException as e:
            raised.append(e)

    try:
        trio.run(main)
    finally:
        server_end.close()
        b.close()
        point.close()
    assert len(raised) == 1 and type(raised[0]) is OSError, raised
    assert raised[0].errno == errno.ENOBUFS
    assert conn.session.fid_count() == 0


def test_a_background_reply_that_cannot_be_sent_ends_the_connection(tmp_path: Path) -> None:
    """A threaded request's reply whose send fails (ENOBUFS): the stream lost a reply, so
    the connection must end (the client sees EOF), not go on without it (the client waited
    for that tag for ever)."""
    import socket
    import threading

    import trio

    from gofer9p.protocol import constants as C
    from gofer9p.protocol.codec import encode
    from gofer9p.protocol.messages import Tfsync, Tversion
    from gofer9p.server import Connection, ServerConfig

    class NoBufsMsg(socket.socket):
        """send() works (the inline replies); sendmsg() fails (the background path's)."""

        __slots__ = ()

        def sendmsg(self, *a: Any, **kw: Any) -> int:
            raise OSError(errno.ENOBUFS, "no buffer space")

    point = AttachPoint.open(str(tmp_path))
    a, b = socket.socketpair()
    server_end = NoBufsMsg(fileno=a.detach())
    conn = Connection(server_end, point, ServerConfig(), "nobufs")
    b.settimeout(10)
    b.sendall(encode(Tversion(C.NOTAG, 8192, C.VERSION_9P2000L)))
    # a Tfsync is always run in a worker thread (may block): its reply is a background one
    b.sendall(encode(Tfsync(5, 1, 0)))
    got = bytearray()

    def read_until_eof() -> None:
        while chunk := b.recv(65536):
            got.extend(chunk)

    reader = threading.Thread(target=read_until_eof)
    reader.start()

    ended: list[bool] = []

    async def main() -> None:
        with trio.move_on_after(10) as scope:
            await conn.run()
        ended.append(not scope.cancelled_caught)

    try:
        trio.run(main)
        reader.join(10)
    finally:
        server_end.close()
        b.close()
        point.close()
    assert ended == [True], "the connection went on without the lost reply"
    assert not reader.is_alive(), "the client still waits: the connection did not end"
    assert got[4] == 101, "the Rversion came first"  # and then EOF, no Rfsync
