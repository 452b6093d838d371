"""What a hostile client's few KB can make the in-process server hold (issue 21).

Each test plays one attack against ``serve`` on a socketpair and measures the peak of the
server's traced Python memory (tracemalloc: every bytearray/bytes/object the server makes is
traced; the client's frames are built before the measurement) against a bound derived from
the config, far below what the attack used to cost.  The bounds per connection are written in
docs/RESOURCES.md; ``gofer9p.server.memory_bound`` is the formula.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

import pytest
import trio

from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode
from gofer9p.server import ServerConfig

from .rawpeer import raw_peer, traced_growth

MSIZE = 1 << 20
COUNT = MSIZE - C.IOHDRSZ


async def _open(peer, fid: int, name: bytes, flags: int = C.L_O_RDONLY) -> None:  # type: ignore[no-untyped-def]
    r = await peer.rpc(M.Twalk(tag=2, fid=1, newfid=fid, wnames=[name]))
    assert isinstance(r, M.Rwalk), r
    if flags >= 0:
        r = await peer.rpc(M.Tlopen(tag=3, fid=fid, flags=flags))
        assert isinstance(r, M.Rlopen), r


# ----------------------------------------------------------------------------- Tread

_FAILING = {
    "unknown-fid": (99, 0, errno.EBADF),
    "unopened-fid": (3, 0, errno.EBADF),
    "directory": (4, 0, errno.EISDIR),
    "offset-2**63": (2, 1 << 63, errno.EINVAL),
    "offset-2**64-1": (2, (1 << 64) - 1, errno.EINVAL),
}


@pytest.mark.parametrize("case", [*_FAILING, "at-eof", "small-file"])
async def test_failing_large_treads_commit_no_buffers(
    export: Path, nursery: trio.Nursery, case: str
) -> None:
    """100 pipelined max-count Treads that fail, hit EOF or can return only a few bytes:
    the server used to take a fresh msize buffer for each before knowing and keep it until
    256 KiB of replies were queued (100 MiB here; 4 GB with 1000 Treads at msize 4 MiB).
    Now a Tread's buffer is sized by what the file can give, after the fid is checked."""
    (export / "big").write_bytes(b"b" * (3 * MSIZE))
    (export / "small").write_bytes(b"s" * 100)
    (export / "d").mkdir()
    async with raw_peer(nursery, export, msize=MSIZE) as peer:
        await _open(peer, 2, b"big")
        await _open(peer, 3, b"big", flags=-1)
        await _open(peer, 4, b"d")
        await _open(peer, 5, b"small")
        if case in _FAILING:
            fid, offset, code = _FAILING[case]
        elif case == "at-eof":
            fid, offset, code = 2, 3 * MSIZE, 0
        else:
            fid, offset, code = 5, 0, 0
        frames = b"".join(
            encode(M.Tread(tag=100 + i, fid=fid, offset=offset, count=COUNT)) for i in range(100)
        )
        async with traced_growth() as growth:
            await peer.send(frames)
            got = await peer.replies(set(range(100, 200)))
        for r in got:
            if code:
                assert isinstance(r, M.Rlerror) and r.ecode == code, r
            else:
                assert isinstance(r, M.Rread), r
                assert len(r.data) == (100 if case == "small-file" else 0)
        print(f"PEAK-GROWTH {growth[0] >> 10} KiB")
        assert growth[0] < 2 * MSIZE, f"{case}: peak growth {growth[0] >> 10} KiB"


@pytest.mark.parametrize("splice", [True, False])
async def test_short_small_treads_keep_no_unused_tail(
    export: Path, nursery: trio.Nursery, splice: bool
) -> None:
    """1,000 pipelined 30,000-byte Treads of a 100-byte file: each reply is 111 bytes on
    the wire; its buffer must not stay 30 KB while replies queue up (before: 30 MB)."""
    (export / "small").write_bytes(b"s" * 100)
    async with raw_peer(nursery, export, ServerConfig(splice=splice), msize=MSIZE) as peer:
        await _open(peer, 5, b"small")
        frames = b"".join(
            encode(M.Tread(tag=100 + i, fid=5, offset=0, count=30000)) for i in range(1000)
        )
        async with traced_growth() as growth:
            await peer.send(frames)
            got = await peer.replies(set(range(100, 1100)))
        assert all(isinstance(r, M.Rread) and len(r.data) == 100 for r in got)
        print(f"PEAK-GROWTH {growth[0] >> 10} KiB")
        assert growth[0] < 2 * MSIZE, f"peak growth {growth[0] >> 10} KiB"


# ------------------------------------------------------------------- receive buffer


async def test_pre_version_frame_larger_than_a_tversion_closes(
    export: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Before Tversion a header announcing 4 MiB is a framing error, not a 4 MiB buffer."""
    caplog.set_level(logging.INFO, logger="gofer9p")
    async with raw_peer(nursery, export, version=False) as peer:
        async with traced_growth() as growth:
            await peer.send((4 << 20).to_bytes(4, "little") + bytes([C.MsgType.TVERSION, 0xFF]))
            assert await peer.closed_by_server()
        print(f"PEAK-GROWTH {growth[0] >> 10} KiB")
        assert growth[0] < 64 * 1024, f"peak growth {growth[0] >> 10} KiB"
    lines = [r for r in caplog.records if "frame size" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


async def test_receive_buffer_grows_with_what_arrived(
    export: Path, nursery: trio.Nursery
) -> None:
    """After Tversion(1 MiB), a header announcing a 1 MiB Twrite followed by 1 KiB of it:
    the receive buffer does not jump to what the header claims."""
    async with raw_peer(nursery, export, msize=MSIZE) as peer:
        head = encode(M.Twrite(tag=5, fid=1, offset=0, data=b"w" * (MSIZE - 100)))[:1024]
        async with traced_growth() as growth:
            await peer.send(head)
            await trio.sleep(0.2)
        print(f"PEAK-GROWTH {growth[0] >> 10} KiB")
        assert growth[0] < 256 * 1024, f"peak growth {growth[0] >> 10} KiB"


@pytest.mark.parametrize("steps", ["write-read", "read-write-read"])
async def test_growing_to_a_max_frame_peaks_no_higher_than_the_session_at_rest(
    export: Path, nursery: trio.Nursery, steps: str
) -> None:
    """At msize M = 4 MiB a session that writes and reads max-size payloads holds, at rest,
    one receive buffer (M + 64 KiB) and one pooled read buffer (M).  Growing the receive
    buffer to a max-size Twrite must not peak above that: the growth used to keep the
    pooled read buffer, a 4 MiB intermediate buffer and a temporary copy of the partial
    frame alive beside the new buffer (12 MiB first, 16 MiB after a read: VmHWM of
    benchmarks/memory.py went 39.5 -> 47 MiB)."""
    m = 4 << 20
    count = m - C.IOHDRSZ
    (export / "big").write_bytes(b"r" * m)
    (export / "w").write_bytes(b"")
    async with raw_peer(nursery, export, msize=m) as peer:
        assert peer.msize == m
        await _open(peer, 2, b"big")
        await _open(peer, 3, b"w", flags=C.L_O_RDWR)
        read = encode(M.Tread(tag=10, fid=2, offset=0, count=count))
        write = encode(M.Twrite(tag=11, fid=3, offset=0, data=b"w" * count))
        frames = [write, read] if steps == "write-read" else [read, write, read]
        async with traced_growth() as growth:
            for f in frames:
                if f is write:
                    # all but its last 1000 bytes first: a buffer of exactly 4 MiB, had
                    # the growth stopped there, must grow once more
                    # (views: a slice of the frame would be traced as 4 MiB of ours)
                    await peer.send(memoryview(f)[:-1000])
                    await trio.sleep(0.2)
                    await peer.send(memoryview(f)[-1000:])
                else:
                    await peer.send(f)
                ((mtype, _tag, size),) = await peer.skim(1)
                assert mtype == f[4] + 1, (mtype, size)
        assert size == 11 + count
        print(f"PEAK-GROWTH {growth[0] >> 10} KiB")
        assert growth[0] < 2 * m + (64 << 10) + (1 << 20), f"peak growth {growth[0] >> 10} KiB"
    assert (export / "w").stat().st_size == count


async def test_frame_above_msize_closes_before_growing(
    export: Path, nursery: trio.Nursery
) -> None:
    async with raw_peer(nursery, export, msize=64 * 1024) as peer:
        async with traced_growth() as growth:
            await peer.send((4 << 20).to_bytes(4, "little") + b"\x76\x05\x00" + b"x" * 100)
            assert await peer.closed_by_server()
        print(f"PEAK-GROWTH {growth[0] >> 10} KiB")
        assert growth[0] < 256 * 1024, f"peak growth {growth[0] >> 10} KiB"


# ---------------------------------------------------------- stuck replies: flush, FIFO


async def _stuck_fifo_read(peer, export: Path) -> int:  # type: ignore[no-untyped-def]
    """Make a threaded request whose reply cannot be sent: a 60 KB read of a FIFO (our
    end keeps it full) into a socket whose buffers are tiny and whose peer does not read.
    Returns the FIFO fd the test must close."""
    os.mkfifo(export / "fifo")
    wfd = os.open(export / "fifo", os.O_RDWR | os.O_NONBLOCK)
    os.write(wfd, b"f" * 60000)
    await _open(peer, 6, b"fifo", flags=C.L_O_RDWR)
    await peer.send(encode(M.Tread(tag=50, fid=6, offset=0, count=60000)))
    await trio.sleep(0.2)  # in its thread, then stuck in sendmsg
    return wfd


_TINY = ServerConfig(sockbuf=4096)


def _tiny_buffers(sock: socket.socket) -> None:
    """Our socket buffers as small as the kernel allows, so that what the server does not
    read or cannot send stays in its process, where it is measured."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4096)


async def test_flushes_of_a_stuck_request_are_bounded(
    export: Path, nursery: trio.Nursery
) -> None:
    """20,000 Tflush of one request whose reply is stuck: they used to be a task each
    (+2 GB for a million); now at most one waiter per old tag, every waiting flush takes an
    in-flight slot, and past the limit the connection stops reading."""
    assert stat.S_IFIFO  # (the FIFO is made by _stuck_fifo_read)
    async with raw_peer(nursery, export, _TINY, msize=MSIZE) as peer:
        _tiny_buffers(peer.sock)
        wfd = await _stuck_fifo_read(peer, export)
        frames = b"".join(encode(M.Tflush(tag=1000 + i, oldtag=50)) for i in range(20000))
        async with traced_growth() as growth:
            sent = await peer.send_some(frames)
        os.close(wfd)
        print(f"PEAK-GROWTH {growth[0] >> 10} KiB")
        assert sent < len(frames), "the server kept reading flushes of a stuck request"
        assert growth[0] < 1 << 20, f"peak growth {growth[0] >> 10} KiB"


async def test_stuck_fifo_writes_hold_no_payload_copies(
    export: Path, nursery: trio.Nursery
) -> None:
    """48 x 1 MiB Twrites to a FIFO behind a stuck reply: each payload was copied before
    the in-flight slot was taken and kept until its reply was sent (48 MiB here, 256 MiB per
    connection at msize 4 MiB).  Now payloads count against a byte budget, are copied only
    after admission and dropped once written."""
    async with raw_peer(nursery, export, _TINY, msize=MSIZE) as peer:
        _tiny_buffers(peer.sock)
        wfd = await _stuck_fifo_read(peer, export)
        data = b"w" * (MSIZE - 100)
        frames = b"".join(
            encode(M.Twrite(tag=2000 + i, fid=6, offset=0, data=data)) for i in range(48)
        )
        async with traced_growth() as growth:
            await peer.send_some(frames)
        del frames
        os.close(wfd)
        print(f"PEAK-GROWTH {growth[0] >> 10} KiB")
        assert growth[0] < 4 * MSIZE, f"peak growth {growth[0] >> 20} MiB"
