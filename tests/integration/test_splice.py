"""Spliced Treads (server.py: file pages -> pipe -> socket, no copy through the server).

They must answer exactly what a copied read answers, keep the replies in
order, and never hold the event loop when a client stops reading.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
import trio

from gofer9p.client import P9Error
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode
from gofer9p.server import ServerConfig

from .conftest import ConnectFn
from .test_server import _frames_until, _raw_session

DATA = os.urandom((1 << 20) + 123)
K = 1024
N = len(DATA)
CASES = [
    (0, 32 * K),  # the smallest spliced count
    (1, 32 * K - 1),  # one byte below: copied
    (4095, 64 * K),  # unaligned: one page more than its size
    (5, 252 * K),  # the largest spliced count, unaligned
    (7, 252 * K + 1),  # one above: copied
    (0, 256 * K),  # flush_bytes: the held-back path
    (N - 100, 64 * K),  # crosses the end of the file
    (N, 64 * K),  # at the end
    (N + 5000, 64 * K),  # past it
]


def _count_splices(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The counts of the file -> pipe splices the session makes from now on."""
    import gofer9p.attach._io as session

    counts: list[int] = []
    real = session._splice

    def counting(src: int, dst: int, count: int, offset: int) -> int:
        counts.append(count)
        return real(src, dst, count, offset)

    monkeypatch.setattr(session, "_splice", counting)
    return counts


def _pipe_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    return n


@pytest.mark.parametrize("splice", [True, False])
async def test_reads_of_every_size_return_the_file(
    connect_export: ConnectFn, export: Path, splice: bool
) -> None:
    (export / "f").write_bytes(DATA)
    async with connect_export(config=ServerConfig(splice=splice), msize=1 << 20) as s:
        c = s.client
        fid = await c.walk_to(s.root, "f")
        await c.lopen(fid, C.L_O_RDONLY)
        for off, count in CASES:
            assert await c.read(fid, off, count) == DATA[off : off + count], (off, count)
        # a write-only fid: the same EBADF as a copied read
        w, _ = await c.walk(s.root, [])
        await c.lcreate(w, "w", C.L_O_WRONLY, 0o644)
        await c.write(w, 0, DATA[: 64 * K])
        with pytest.raises(P9Error) as ei:
            await c.read(w, 0, 64 * K)
        assert ei.value.errno == errno.EBADF
        # the file changes between reads: each read sees it as it is
        (export / "f").write_bytes(DATA[::-1])
        assert await c.read(fid, 4095, 64 * K) == DATA[::-1][4095 : 4095 + 64 * K]


async def test_mid_sized_reads_are_spliced_and_replies_keep_their_order(
    export: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    spliced = _count_splices(monkeypatch)
    (export / "big").write_bytes(DATA)
    before = _pipe_fds()
    b = await _raw_session(export, nursery, msize=1 << 20, name=b"big")
    assert _pipe_fds() == before + 2  # the connection's pipe, made at Tversion
    b.sendall(
        encode(M.Tread(tag=10, fid=2, offset=0, count=64 * K))
        + encode(M.Tgetattr(tag=11, fid=1, request_mask=C.GETATTR_BASIC))
        + encode(M.Tread(tag=12, fid=2, offset=100, count=200 * K))
        + encode(M.Tread(tag=13, fid=2, offset=0, count=4 * K))
        + encode(M.Tread(tag=14, fid=2, offset=0, count=512 * K))
        + encode(M.Tread(tag=15, fid=2, offset=N - 10, count=64 * K))
        + encode(M.Tclunk(tag=16, fid=2))
    )
    got = await _frames_until(b, set(range(10, 17)))
    # in order: the 512 KiB reply (held back, as before splicing) goes out
    # before the next Tread, whose reply is spliced
    assert [m.tag for m in got] == list(range(10, 17))
    want = {10: DATA[: 64 * K], 12: DATA[100 : 100 + 200 * K], 13: DATA[: 4 * K]}
    want |= {14: DATA[: 512 * K], 15: DATA[N - 10 :]}
    for m in got:
        if m.tag in want:
            assert isinstance(m, M.Rread) and bytes(m.data) == want[m.tag], m.tag
    assert spliced == [64 * K, 200 * K, 64 * K]  # not the 4 KiB nor the 512 KiB read
    b.close()


async def test_a_client_that_stops_reading_stalls_only_itself(
    export: Path, nursery: trio.Nursery
) -> None:
    """Spliced replies that do not fit the socket wait for the client through
    trio: the loop keeps serving other connections.  (A splice to the socket
    in blocking mode would hold the thread; the timer below then unblocks it
    by reading, and the test fails on time instead of hanging.)"""
    (export / "big").write_bytes(DATA)
    a = await _raw_session(export, nursery, msize=1 << 20, name=b"big")
    c = await _raw_session(export, nursery)
    reads = 48  # 48 x 200 KiB: far more than the socket buffers hold
    a.sendall(
        b"".join(
            encode(M.Tread(tag=100 + i, fid=2, offset=i * K, count=200 * K)) for i in range(reads)
        )
    )

    def rescue() -> None:
        a.setblocking(True)
        left = reads * (11 + 200 * K)
        while left > 0:
            left -= len(a.recv(min(left, 1 << 20)))

    timer = threading.Timer(5.0, rescue)
    timer.daemon = True
    timer.start()
    try:
        t0 = time.monotonic()
        await trio.sleep(0.2)  # the server fills a's socket and must wait for it
        c.sendall(encode(M.Tgetattr(tag=5, fid=1, request_mask=C.GETATTR_BASIC)))
        (r,) = await _frames_until(c, {5})
        assert isinstance(r, M.Rgetattr)
        assert time.monotonic() - t0 < 4.0  # answered while a's replies still wait
    finally:
        timer.cancel()
    got = await _frames_until(a, {100 + i for i in range(reads)})
    assert [m.tag for m in got] == [100 + i for i in range(reads)]
    for i, m in enumerate(got):
        assert isinstance(m, M.Rread) and bytes(m.data) == DATA[i * K : i * K + 200 * K], i
    a.close()
    c.close()


async def test_pipe_size_refused_means_copied_reads(
    export: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F_SETPIPE_SZ refused (EPERM past pipe-user-pages-soft without
    CAP_SYS_RESOURCE): that connection copies, and holds no pipe."""

    def refuse(fd: int, cmd: int, arg: int = 0) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    spliced = _count_splices(monkeypatch)
    monkeypatch.setattr("gofer9p.server.fcntl.fcntl", refuse)
    (export / "big").write_bytes(DATA)
    before = _pipe_fds()
    b = await _raw_session(export, nursery, msize=1 << 20, name=b"big")
    assert _pipe_fds() == before  # made, refused its size, closed
    b.sendall(encode(M.Tread(tag=10, fid=2, offset=4095, count=64 * K)))
    (r,) = await _frames_until(b, {10})
    assert isinstance(r, M.Rread) and bytes(r.data) == DATA[4095 : 4095 + 64 * K]
    assert spliced == []
    b.close()


async def test_a_socket_that_refuses_splice_gets_the_bytes_copied(
    export: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """splice(pipe -> socket) EINVAL (a transport without splice): the data already
    in the pipe is read and sent as bytes, and later reads are copied."""

    def refuse(*args: object, **kw: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    spliced = _count_splices(monkeypatch)  # file -> pipe: still works
    monkeypatch.setattr("gofer9p.server.os.splice", refuse)  # pipe -> socket: refused
    (export / "big").write_bytes(DATA)
    b = await _raw_session(export, nursery, msize=1 << 20, name=b"big")
    b.sendall(
        encode(M.Tread(tag=10, fid=2, offset=4095, count=64 * K))
        + encode(M.Tread(tag=11, fid=2, offset=0, count=100 * K))
    )
    got = await _frames_until(b, {10, 11})
    assert [m.tag for m in got] == [10, 11]
    assert bytes(got[0].data) == DATA[4095 : 4095 + 64 * K]  # type: ignore[union-attr]
    assert bytes(got[1].data) == DATA[: 100 * K]  # type: ignore[union-attr]
    assert spliced == [64 * K]  # the second read was copied
    b.close()
