"""A raw 9P peer for the in-process memory tests: an in-process server on a socketpair, our
end non-blocking, frames sent and received by hand (a hostile client need not be polite), and
the server's Python memory growth measured with tracemalloc.

The client side allocates its frames before the measurement starts and receives into one
preallocated buffer, so the peak traced during an attack is the server's (the client's share
is a few small objects per frame).
"""

from __future__ import annotations

import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from gofer9p.attach import AttachPoint
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import decode, encode
from gofer9p.server import ServerConfig

from .conftest import ServerTask, start_server

_SIZE = struct.Struct("<I")
_HEADER = struct.Struct("<IBH")


@attrs.define
class RawPeer:
    sock: socket.socket
    task: ServerTask
    msize: int
    _rbuf: bytearray = attrs.field(factory=bytearray)
    _chunk: bytearray = attrs.field(factory=lambda: bytearray(1 << 20))

    async def send(self, data: bytes | memoryview | Iterable[bytes]) -> None:
        """Send everything (waiting for room, so the server must keep reading)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            data = b"".join(data)
        mv = memoryview(data)
        while mv:
            try:
                n = self.sock.send(mv)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
                continue
            mv = mv[n:]

    async def send_some(self, data: bytes, patience: float = 0.5) -> int:
        """Send as much of ``data`` as the server takes until it stops reading for
        ``patience`` seconds (back-pressure); bytes sent."""
        mv = memoryview(data)
        sent = 0
        while sent < len(data):
            try:
                sent += self.sock.send(mv[sent:])
            except BlockingIOError:
                with trio.move_on_after(patience) as idle:
                    await trio.lowlevel.wait_writable(self.sock)
                if idle.cancelled_caught:
                    break
        return sent

    async def replies(self, tags: set[int], timeout: float = 20) -> list[M.Message]:
        """Replies read until every tag in ``tags`` was answered (in arrival order)."""
        got: list[M.Message] = []
        with trio.fail_after(timeout):
            while tags - {m.tag for m in got}:
                got.extend(await self._frames())
        return got

    async def _frames(self) -> list[M.Message]:
        await trio.lowlevel.wait_readable(self.sock)
        n = self.sock.recv_into(self._chunk)
        if not n:
            raise EOFError("server closed")
        buf = self._rbuf
        buf += memoryview(self._chunk)[:n]
        out = []
        while len(buf) >= 4 and len(buf) >= _SIZE.unpack_from(buf)[0]:
            size = _SIZE.unpack_from(buf)[0]
            out.append(decode(bytes(buf[:size])))
            del buf[:size]
        return out

    async def skim(self, count: int, timeout: float = 20) -> list[tuple[int, int, int]]:
        """Read ``count`` replies keeping only their (type, tag, size), through the
        preallocated buffer: decoding a max-size Rread (a copy or two of it) would be traced
        as megabytes of the client's memory."""
        got: list[tuple[int, int, int]] = []
        head = self._rbuf  # a partial header
        skip = 0  # body bytes of the current reply still to drop
        with trio.fail_after(timeout):
            while len(got) < count or skip or head:
                await trio.lowlevel.wait_readable(self.sock)
                n = self.sock.recv_into(self._chunk)
                if not n:
                    raise EOFError("server closed")
                mv = memoryview(self._chunk)[:n]
                while mv:
                    if skip:
                        k = min(skip, len(mv))
                        skip -= k
                    else:
                        k = min(7 - len(head), len(mv))
                        head += mv[:k]
                        if len(head) == 7:
                            size, mtype, tag = _HEADER.unpack(head)
                            got.append((mtype, tag, size))
                            skip = size - 7
                            del head[:]
                    mv = mv[k:]
        return got

    async def rpc(self, msg: M.Message) -> M.Message:
        await self.send(encode(msg))
        (r,) = [m for m in await self.replies({msg.tag}) if m.tag == msg.tag]
        return r

    async def closed_by_server(self, timeout: float = 10) -> bool:
        """Whether the server closes the connection (EOF) within ``timeout``."""
        with trio.move_on_after(timeout):
            while True:
                await trio.lowlevel.wait_readable(self.sock)
                try:
                    if not self.sock.recv_into(self._chunk):
                        return True
                except ConnectionResetError:
                    return True
        return False


@asynccontextmanager
async def raw_peer(
    nursery: trio.Nursery,
    export: Path,
    config: ServerConfig | None = None,
    *,
    msize: int = 1 << 20,
    version: bool = True,
) -> AsyncIterator[RawPeer]:
    """An in-process server on ``export``; with ``version``, Tversion(msize) done and fid 1
    attached to the root.  At exit our end is closed and the server must return cleanly."""
    point = AttachPoint.open(str(export))
    a, b = socket.socketpair()
    st = start_server(nursery, a, point, config)
    b.setblocking(False)
    peer = RawPeer(b, st, msize)
    try:
        if version:
            r = await peer.rpc(M.Tversion(tag=C.NOTAG, msize=msize, version=C.VERSION_9P2000L))
            assert isinstance(r, M.Rversion), r
            peer.msize = r.msize
            r = await peer.rpc(
                M.Tattach(tag=1, fid=1, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0)
            )
            assert isinstance(r, M.Rattach), r
        yield peer
    finally:
        b.close()
        with trio.fail_after(30):
            await st.done.wait()
        point.close()
    assert st.outcome == "returned", st.outcome


@asynccontextmanager
async def traced_growth() -> AsyncIterator[list[int]]:
    """Measure the peak of traced Python memory above what was traced at entry; the
    result (bytes) is appended to the yielded list at exit."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out: list[int] = []
        yield out
        out.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        if started:
            tracemalloc.stop()


__all__ = ["RawPeer", "raw_peer", "traced_growth"]
