"""Property: whatever a client sends, the server's memory stays under the written bound.

Hypothesis draws a byte stream of up to several MB: valid requests on a small fid space
(pipelined large Treads that succeed, fail or hit EOF, Twrites of up to msize to a file, a FIFO
and an xattr, Tflushes of recent tags, walks, opens, readdirs, locks, Tversions), malformed
frames (random bodies, unknown types, a size field out of range, which closes the
connection) and raw random bytes.  A client sends it as fast as the server takes it, and
either reads every reply or never reads one (then the server must stop reading instead of
growing).  The peak of the server's traced Python memory (tracemalloc, measured from before
the connection exists; the stream is built before, and the client receives into one
preallocated buffer) must stay under ``gofer9p.server.memory_bound(config)``, the formula of
docs/RESOURCES.md, for the config used.

The attacks of issue 21 are explicit examples (each exceeded the bound before its fix; the
random search alone found the failing-Tread one within 4 examples).  Default run: 12 random
examples, a few seconds; ``GOFER9P_MEMORY_EXAMPLES=500 python -m pytest
tests/faults/test_memory_bound_property.py`` fuzzes longer.
"""

from __future__ import annotations

import logging
import os
import socket
import tracemalloc
from pathlib import Path

import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gofer9p.attach import AttachPoint
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode
from gofer9p.server import ServerConfig, memory_bound, serve

EXAMPLES = int(os.environ.get("GOFER9P_MEMORY_EXAMPLES", "12"))

MSIZE = 256 * 1024
CONFIG = ServerConfig(max_msize=MSIZE, max_inflight=8, max_fids=64, flush_bytes=64 * 1024,
                      sockbuf=4096, idle_release=0.05)
FILE, FIFO, DIR, XATTR, SPARE = 2, 6, 4, 7, 8
FIDS = [0, 1, FILE, 3, DIR, 5, FIFO, XATTR, SPARE, 0xFFFFFFFF]
_U64 = st.sampled_from([0, 1, 4095, 1 << 20, (1 << 63) - 1, 1 << 63, (1 << 64) - 1])
_COUNT = st.sampled_from([0, 1, 100, 32 * 1024, 64 * 1024, MSIZE - C.IOHDRSZ, 0xFFFFFFFF])
_TAG = st.integers(0, 31)
_FID = st.sampled_from(FIDS)
_NAME = st.sampled_from([b"f", b"d", b"fifo", b"nope", b"..", b"x" * 255, b""])
_PAYLOAD = st.sampled_from([0, 1, 4096, 64 * 1024, MSIZE // 2, MSIZE - 23])


def _setup() -> bytes:
    return b"".join(encode(m) for m in (
        M.Tversion(tag=C.NOTAG, msize=MSIZE, version=C.VERSION_9P2000L),
        M.Tattach(tag=1, fid=1, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0),
        M.Twalk(tag=2, fid=1, newfid=FILE, wnames=[b"f"]),
        M.Tlopen(tag=3, fid=FILE, flags=C.L_O_RDWR),
        M.Twalk(tag=4, fid=1, newfid=DIR, wnames=[b"d"]),
        M.Tlopen(tag=5, fid=DIR, flags=C.L_O_RDONLY),
        M.Twalk(tag=6, fid=1, newfid=FIFO, wnames=[b"fifo"]),
        M.Tlopen(tag=7, fid=FIFO, flags=C.L_O_RDWR),
        M.Twalk(tag=8, fid=1, newfid=XATTR, wnames=[b"f"]),
        M.Txattrcreate(tag=9, fid=XATTR, name=b"user.a", attr_size=60000, flags=0),
    ))


@st.composite
def _request(draw: st.DrawFn) -> bytes:
    tag = draw(_TAG)
    kind = draw(st.sampled_from([
        "read", "read", "read", "write", "write", "flush", "flush", "walk", "clone", "open",
        "clunk", "readdir", "getattr", "lock", "fsync", "setattr", "version", "xattrwalk",
    ]))
    fid = draw(_FID)
    if kind == "read":
        n = draw(st.integers(1, 256))
        off, count = draw(_U64), draw(_COUNT)
        return b"".join(
            encode(M.Tread(tag=(tag + i) % 32, fid=fid, offset=off, count=count))
            for i in range(n))
    if kind == "write":
        data = b"w" * draw(_PAYLOAD)
        return encode(M.Twrite(tag=tag, fid=draw(st.sampled_from([FILE, FIFO, XATTR, 99])),
                               offset=draw(_U64), data=data))
    if kind == "flush":
        n = draw(st.integers(1, 200))
        old = draw(_TAG)
        return b"".join(encode(M.Tflush(tag=(tag + i) % 32 + 32, oldtag=old)) for i in range(n))
    if kind == "walk":
        return encode(M.Twalk(tag=tag, fid=fid, newfid=draw(_FID),
                              wnames=draw(st.lists(_NAME, max_size=17))))
    if kind == "clone":
        return b"".join(encode(M.Twalk(tag=tag, fid=1, newfid=100 + i, wnames=[]))
                        for i in range(draw(st.integers(1, 100))))
    if kind == "open":
        return encode(M.Tlopen(tag=tag, fid=fid, flags=draw(st.sampled_from([0, 2, 0x200, 3]))))
    if kind == "clunk":
        return encode(M.Tclunk(tag=tag, fid=fid))
    if kind == "readdir":
        return encode(M.Treaddir(tag=tag, fid=draw(st.sampled_from([DIR, 1, fid])),
                                 offset=draw(_U64), count=draw(_COUNT)))
    if kind == "getattr":
        return encode(M.Tgetattr(tag=tag, fid=fid, request_mask=C.GETATTR_ALL))
    if kind == "lock":
        return encode(M.Tlock(tag=tag, fid=fid, type=draw(st.integers(0, 3)), flags=0,
                              start=draw(_U64), length=draw(_U64),
                              proc_id=draw(st.integers(0, 3)), client_id=b"c"))
    if kind == "fsync":
        return encode(M.Tfsync(tag=tag, fid=fid, datasync=0))
    if kind == "setattr":
        return encode(M.Tsetattr(tag=tag, fid=fid, valid=C.SETATTR_SIZE,
                                 mode=0, uid=0, gid=0, size=draw(st.integers(0, 1 << 20)),
                                 atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0))
    if kind == "xattrwalk":
        return encode(M.Txattrwalk(tag=tag, fid=fid, newfid=draw(_FID), name=b""))
    return encode(M.Tversion(tag=C.NOTAG, msize=draw(st.sampled_from([4096, MSIZE, 1 << 30])),
                             version=C.VERSION_9P2000L))


@st.composite
def _malformed(draw: st.DrawFn) -> bytes:
    """A frame with a good size field and a bad body or type (the stream goes on)."""
    if draw(st.booleans()):  # a known type with a random body
        mtype = draw(st.sampled_from(sorted(t for t in C.MsgType if t % 2 == 0)))
    else:
        mtype = draw(st.integers(0, 255))
    body = draw(st.binary(max_size=64))
    return (7 + len(body)).to_bytes(4, "little") + bytes([mtype, 1, 0]) + body


# what breaks the framing (the connection closes there): only at the end of a stream
_tail = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=256),
    st.sampled_from([MSIZE + 1, 1 << 30, 0xFFFFFFFF, 3]).map(
        lambda n: n.to_bytes(4, "little") + b"\x6e"),
)
_stream = st.tuples(st.lists(st.one_of(*[_request()] * 8, _malformed()), min_size=10,
                             max_size=120), _tail).map(lambda pt: [*pt[0], pt[1]])


def _attack(*frames: M.Message, times: int = 1) -> list[bytes]:
    return [b"".join(encode(f) for f in frames)] * times


# the attacks of issue 21, as explicit examples (each broke the bound before its fix)
_FAILING_READS = _attack(*(M.Tread(tag=i % 32, fid=99, offset=0, count=MSIZE) for i in range(256)),
                         times=4)
_FLUSH_STORM = [
    encode(M.Tread(tag=0, fid=FIFO, offset=0, count=MSIZE)),
    *_attack(*(M.Tflush(tag=32 + i % 32, oldtag=0) for i in range(2000))),
]
_FIFO_WRITES = _attack(M.Twrite(tag=5, fid=FIFO, offset=0, data=b"w" * (MSIZE - 23)), times=32)


def _export(tmp: Path) -> tuple[Path, int]:
    export = tmp / "export"
    if not export.exists():
        export.mkdir()
        (export / "d").mkdir()
        for i in range(50):
            (export / "d" / f"e{i}").write_bytes(b"")
        os.mkfifo(export / "fifo")
    (export / "f").write_bytes(b"f" * (3 * MSIZE))
    # our end of the FIFO: it has a reader and a writer, so the server's opens never fail
    fifo = os.open(export / "fifo", os.O_RDWR | os.O_NONBLOCK)
    return export, fifo


async def _run(export: Path, stream: bytes, read_replies: bool) -> tuple[int, object]:
    """Serve one connection fed ``stream``; returns (peak growth, how serve ended)."""
    a, b = socket.socketpair()
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        b.setsockopt(socket.SOL_SOCKET, opt, 4096)
    b.setblocking(False)
    rbuf = bytearray(1 << 16)
    outcome: list[object] = []
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    point = AttachPoint.open(str(export))

    async def server() -> None:
        try:
            await serve(a, point, CONFIG, name="prop")
            outcome.append("returned")
        except Exception as e:  # recorded, asserted on below
            outcome.append(e)

    async def reader() -> None:
        while True:
            await trio.lowlevel.wait_readable(b)
            try:
                if not b.recv_into(rbuf):
                    return
            except OSError:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        if read_replies:
            nursery.start_soon(reader)
        mv = memoryview(stream)
        sent = 0
        while sent < len(stream):
            try:
                sent += b.send(mv[sent:sent + (1 << 16)])
            except BlockingIOError:
                with trio.move_on_after(0.3) as idle:
                    await trio.lowlevel.wait_writable(b)
                if idle.cancelled_caught:
                    break  # the server stopped reading (back-pressure): enough
            except OSError:
                break  # it closed the connection (a framing error)
        await trio.sleep(0.1)  # let it handle what it read (and grow, if it would)
        peak = tracemalloc.get_traced_memory()[1] - base
        b.close()
        with trio.fail_after(30):
            while not outcome:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    a.close()
    point.close()
    return peak, outcome[0]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(parts=_stream, read_replies=st.booleans())
@example(parts=_FAILING_READS, read_replies=True)
@example(parts=_FLUSH_STORM, read_replies=False)
@example(parts=_FIFO_WRITES, read_replies=False)
def test_memory_stays_under_the_written_bound(
    tmp_path_factory: object, parts: list[bytes], read_replies: bool
) -> None:
    tmp = Path(str(tmp_path_factory.getbasetemp())) / "membound"  # type: ignore[attr-defined]
    tmp.mkdir(exist_ok=True)
    export, fifo = _export(tmp)
    stream = _setup() + b"".join(parts)
    logger = logging.getLogger("gofer9p")
    level, errors = logger.level, _Errors()
    # no per-frame log records kept in memory by pytest's capture (they are not the server's)
    logger.setLevel(logging.ERROR)
    logger.addHandler(errors)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        peak, outcome = trio.run(_run, export, stream, read_replies)
    finally:
        if started:
            tracemalloc.stop()
        logger.removeHandler(errors)
        logger.setLevel(level)
        os.close(fifo)
    bound = memory_bound(CONFIG)
    assert outcome == "returned", outcome
    assert not errors.records, errors.records
    assert peak <= bound, (
        f"peak growth {peak >> 10} KiB > bound {bound >> 10} KiB for a {len(stream)}-byte "
        f"stream (read_replies={read_replies})"
    )
