"""The peer misbehaves at the transport level: closes mid-request, closes mid-reply, half-closes,
or sends without ever reading.

In-process cases watch the ``serve`` task itself (it must *return*, not raise, and log no
error); subprocess cases watch ``gofer9p serve --fd`` from the outside (exit status, log,
VmRSS, fds in /proc).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from gofer9p.attach import AttachPoint
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode

from .conftest import GoferProc, start_server

NOFID = C.NOFID
HDR = struct.Struct("<IBH")


def _recv_frame(sock: socket.socket, timeout: float = 10) -> tuple[int, int, bytes]:
    """One whole reply frame from a blocking socket: (type, tag, body)."""
    sock.settimeout(timeout)
    buf = b""
    while len(buf) < 7:
        chunk = sock.recv(7 - len(buf))
        if not chunk:
            raise EOFError("server closed")
        buf += chunk
    size, mtype, tag = HDR.unpack(buf)
    body = b""
    while len(body) < size - 7:
        chunk = sock.recv(min(1 << 20, size - 7 - len(body)))
        if not chunk:
            raise EOFError("server closed mid-frame")
        body += chunk
    return mtype, tag, body


def _rpc(sock: socket.socket, msg: M.Message) -> tuple[int, bytes]:
    sock.sendall(encode(msg))
    mtype, tag, body = _recv_frame(sock)
    assert tag == msg.tag
    assert mtype == type(msg).TYPE + 1, (mtype, body)
    return mtype, body


def _handshake(sock: socket.socket, msize: int = 65536) -> None:
    _rpc(sock, M.Tversion(tag=C.NOTAG, msize=msize, version=C.VERSION_9P2000L))
    _rpc(sock, M.Tattach(tag=1, fid=1, afid=NOFID, uname=b"root", aname=b"", n_uname=0))


def _export_fds(export: Path) -> list[str]:
    """fds of this process that point into ``export`` (what a leaked fid would hold)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(export)):
            out.append(target)
    return out


def _partial_frames() -> dict[str, bytes]:
    getattr_ = encode(M.Tgetattr(tag=5, fid=1, request_mask=C.GETATTR_ALL))
    walk = encode(M.Twalk(tag=6, fid=1, newfid=2, wnames=[b"a" * 100, b"b" * 100]))
    write_hdr = HDR.pack(7 + 16 + (1 << 20), C.MsgType.TWRITE, 7) + struct.pack(
        "<IQI", 1, 0, 1 << 20
    )
    return {
        "3-bytes-of-size": getattr_[:3],
        "header-only": getattr_[:7],
        "half-getattr": getattr_[: len(getattr_) // 2],
        "half-walk": walk[: len(walk) // 2],
        "write-claims-1MiB-sends-100KiB": write_hdr + b"w" * (100 * 1024),
        "one-byte": b"\x40",
    }


@pytest.mark.parametrize("cut", list(_partial_frames()))
async def test_close_mid_request(
    export: Path, nursery: trio.Nursery, cut: str, server_errors: Callable[[], list[str]]
) -> None:
    """Half a frame, then the peer closes: the server task returns, logs no error, and holds
    no fd of the export afterwards."""
    point = AttachPoint.open(str(export))
    a, b = socket.socketpair()
    st = start_server(nursery, a, point)
    await trio.to_thread.run_sync(_handshake, b, 2 << 20)
    b.sendall(_partial_frames()[cut])
    b.close()
    with trio.fail_after(10):
        await st.done.wait()
    assert st.outcome == "returned", st.outcome
    point.close()
    assert _export_fds(export) == []
    assert server_errors() == []


@pytest.mark.parametrize("reads", [1, 16])
async def test_close_mid_reply_in_process(
    export: Path, nursery: trio.Nursery, reads: int, server_errors: Callable[[], list[str]]
) -> None:
    """Ask for 4 MiB reads and close without reading a byte: the replies cannot be sent;
    the server task still returns cleanly and releases every fid."""
    (export / "big").write_bytes(os.urandom(8 << 20))
    point = AttachPoint.open(str(export))
    a, b = socket.socketpair()
    st = start_server(nursery, a, point)
    msize = 4 << 20

    def client() -> None:
        _handshake(b, msize)
        _rpc(b, M.Twalk(tag=2, fid=1, newfid=2, wnames=[b"big"]))
        _rpc(b, M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
        frames = b"".join(
            encode(M.Tread(tag=10 + i, fid=2, offset=0, count=msize - C.IOHDRSZ))
            for i in range(reads)
        )
        b.sendall(frames)
        time.sleep(0.05)  # let the server start replying into a full socket buffer
        b.close()

    await trio.to_thread.run_sync(client)
    with trio.fail_after(15):
        await st.done.wait()
    assert st.outcome == "returned", st.outcome
    point.close()
    assert _export_fds(export) == []
    assert server_errors() == []


async def test_half_close_gets_every_reply(export: Path, nursery: trio.Nursery) -> None:
    """The peer sends 200 requests and shuts down its write side: every request already sent
    is answered before the server closes."""
    point = AttachPoint.open(str(export))
    a, b = socket.socketpair()
    st = start_server(nursery, a, point)

    def client() -> int:
        _handshake(b)
        b.sendall(b"".join(encode(M.Tgetattr(tag=100 + i, fid=1, request_mask=C.GETATTR_BASIC))
                           for i in range(200)))
        b.shutdown(socket.SHUT_WR)
        n = 0
        for _ in range(201):
            try:
                mtype, tag, _ = _recv_frame(b)
            except EOFError:
                break
            assert mtype == C.MsgType.RGETATTR and tag == 100 + n
            n += 1
        b.close()
        return n

    assert await trio.to_thread.run_sync(client) == 200
    with trio.fail_after(10):
        await st.done.wait()
    assert st.outcome == "returned"
    point.close()


# ------------------------------------------------------------------------ subprocess


def test_close_mid_reply_subprocess(export: Path, gofer_proc: Callable[..., GoferProc]) -> None:
    """The real ``gofer9p serve --fd``: 16 x 4 MiB reads requested, peer gone.  The gofer
    exits 0 (its one connection ended) with no traceback or error in its log."""
    (export / "big").write_bytes(os.urandom(8 << 20))
    g = gofer_proc()
    msize = 4 << 20
    _handshake(g.sock, msize)
    _rpc(g.sock, M.Twalk(tag=2, fid=1, newfid=2, wnames=[b"big"]))
    _rpc(g.sock, M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
    g.sock.sendall(b"".join(
        encode(M.Tread(tag=10 + i, fid=2, offset=0, count=msize - C.IOHDRSZ)) for i in range(16)
    ))
    time.sleep(0.1)
    g.sock.close()
    assert g.wait(15) == 0, g.log()
    log = g.log()
    assert "Traceback" not in log and " ERROR " not in log and "CRITICAL" not in log, log


FLOOD_SECONDS = 2.0
RSS_BUDGET_KIB = 64 * 1024


def test_flood_without_reading_is_throttled(
    export: Path, gofer_proc: Callable[..., GoferProc]
) -> None:
    """Send Tgetattr frames as fast as possible for ~2 s and never read: the gofer must stop
    reading (our sends hit EAGAIN and stay blocked), its VmRSS must stay within a fixed budget,
    and once we read, every request sent is answered, in order, with Rgetattr."""
    g = gofer_proc()
    sock = g.sock
    _handshake(sock)
    rss0 = g.rss_kib()
    sock.setblocking(False)
    batch = b"".join(
        encode(M.Tgetattr(tag=i, fid=1, request_mask=C.GETATTR_BASIC)) for i in range(256)
    )
    frame_len = len(batch) // 256
    sent = 0  # bytes
    eagain = 0
    rss_max = rss0
    samples = []
    start = time.monotonic()
    next_sample = start
    pending = memoryview(batch)
    for _ in range(10_000_000):  # bounded by time below
        now = time.monotonic()
        if now - start >= FLOOD_SECONDS:
            break
        if now >= next_sample:
            rss = g.rss_kib()
            samples.append(rss)
            rss_max = max(rss_max, rss)
            next_sample = now + 0.1
        try:
            n = sock.send(pending)
        except BlockingIOError:
            eagain += 1
            time.sleep(0.001)
            continue
        sent += n
        pending = pending[n:]
        if not pending:
            pending = memoryview(batch)
    # Keep offering data until the gofer has accepted nothing for a whole second: on a busy
    # machine it may still be working through its backlog when the flood ends.  It must then
    # stall for good (its replies fill our receive buffer, so it stops reading).
    last_progress = time.monotonic()
    stalled = False
    for _ in range(100_000):  # bounded by the 20 s below
        now = time.monotonic()
        if now - last_progress >= 1.0:
            stalled = True
            break
        if now - start > FLOOD_SECONDS + 20:
            break
        rss_max = max(rss_max, g.rss_kib())
        try:
            n = sock.send(pending)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        sent += n
        last_progress = time.monotonic()
        pending = pending[n:]
        if not pending:
            pending = memoryview(batch)
    stalled_at = sent
    frames_sent = sent // frame_len
    partial = sent % frame_len
    assert eagain > 0 and stalled, (eagain, sent)
    assert sent < 64 << 20, f"the gofer read {sent} bytes of requests it could not answer"
    growth = rss_max - rss0
    assert growth < RSS_BUDGET_KIB, f"VmRSS grew {growth} KiB while flooded (samples {samples})"
    # now read everything, finishing the partial frame we left in the socket
    sock.setblocking(True)
    if partial:
        sock.sendall(batch[partial:frame_len])
        frames_sent += 1
    sock.settimeout(30)
    buf = bytearray()
    got = 0
    deadline = time.monotonic() + 60
    while got < frames_sent and time.monotonic() < deadline:
        chunk = sock.recv(1 << 20)
        assert chunk, "the gofer closed the connection"
        buf += chunk
        pos = 0
        while len(buf) - pos >= 7:
            size, mtype, tag = HDR.unpack_from(buf, pos)
            if len(buf) - pos < size:
                break
            assert mtype == C.MsgType.RGETATTR, mtype
            assert tag == got % 256, (tag, got)
            got += 1
            pos += size
        del buf[:pos]
    assert got == frames_sent, (got, frames_sent)
    print(
        f"flood: {stalled_at} bytes ({stalled_at // frame_len} frames) accepted before the gofer"
        f" stopped reading; {eagain} EAGAINs; VmRSS {rss0} -> max {rss_max} KiB; answered {got}"
    )
    # and a clean exit when we hang up
    sock.close()
    assert g.wait(15) == 0, g.log()
    log = g.log()
    assert "Traceback" not in log and " ERROR " not in log, log


def test_flood_of_max_size_reads_without_reading(
    export: Path, gofer_proc: Callable[..., GoferProc]
) -> None:
    """Hundreds of 4 MiB Treads fit in one received chunk (23 bytes each).  Answering a whole
    chunk before sending would hold gigabytes of replies; the gofer must keep its replies
    bounded while we do not read, and then answer every read with the file's data."""
    (export / "big").write_bytes(os.urandom(4 << 20))
    g = gofer_proc()
    sock = g.sock
    msize = 4 << 20
    _handshake(sock, msize)
    _rpc(sock, M.Twalk(tag=2, fid=1, newfid=2, wnames=[b"big"]))
    _rpc(sock, M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
    rss0 = g.rss_kib()
    n = 300  # 1.2 GB of replies: far above any budget, still quick to drain
    sock.sendall(b"".join(
        encode(M.Tread(tag=10 + i, fid=2, offset=0, count=msize - C.IOHDRSZ)) for i in range(n)
    ))
    rss_max = rss0
    for _ in range(20):  # 2 s of the gofer answering into a socket nobody reads
        time.sleep(0.1)
        rss_max = max(rss_max, g.rss_kib())
    growth = rss_max - rss0
    assert growth < RSS_BUDGET_KIB, f"VmRSS grew {growth} KiB with {n} unread 4 MiB replies"
    # read them all: every reply is a full 4 MiB Rread with our tag
    sock.settimeout(30)
    for i in range(n):
        mtype, tag, body = _recv_frame(sock, 30)
        assert mtype == C.MsgType.RREAD and tag == 10 + i, (mtype, tag)
        assert struct.unpack_from("<I", body)[0] == msize - C.IOHDRSZ
    print(f"{n} x 4 MiB reads: VmRSS {rss0} -> max {rss_max} KiB while unread")
    sock.close()
    assert g.wait(15) == 0, g.log()
