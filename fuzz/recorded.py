"""``python -m fuzz replay REC.pcap``: replay a session recording against a scratch export.

A recording (``gofer9p serve --record``, ``gofer --record-fd``) holds every frame both ways
(gofer9p.record).  Its client side is sent again, frame for frame (same tags, same fids),
to a fresh gofer9p served in-process on a temporary directory (empty, or a copy of
``--export-from DIR``: the tree the recorded export started as), one connection per
recorded connection, and every reply is compared with the recorded one.

Order: a request is sent only once the replay has answered every request whose reply had
been recorded before the request's first byte (in any connection): what the client had
seen when it sent it.  Requests the client pipelined go out pipelined.

What may differ (and is not compared), because it varies between two runs on the same
tree: qid paths and versions (inode numbers), times (atime, mtime, ctime, btime), gen,
data_version, blocks and blksize, a directory's size, all of Rstatfs, directory
cookies (Rreaddir offsets: a recorded cookie sent back in a Treaddir is translated to
the replay's cookie of the same entry), and the reply to a request that a later Tflush
named (it may be flushed or answered: a race).  Entries of one Rreaddir are compared
as a set of (name, type): their order is the filesystem's.

Exit status 0 when every recorded reply was matched, 1 with the first difference, 2 when
the file cannot be replayed (not a recording; headers-only: the names and data are gone).
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from gofer9p.attach import AttachPoint
from gofer9p.protocol import codec
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.framing import NEED_DATA, next_frame
from gofer9p.record import Frame, PcapError, read_frames, read_pcap
from gofer9p.server import ServerConfig, serve

__all__ = ["ReplayError", "is_recording", "normalize", "replay_files", "replay_recording"]

_PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
_TREADDIR_OFFSET = struct.Struct("<Q")  # at byte 11 of a Treaddir: after size, type, tag, fid


class ReplayError(Exception):
    """The recording cannot be replayed (the message says why)."""


def is_recording(path: Path) -> bool:
    """A pcap file (what ``python -m fuzz replay`` hands to this module)."""
    try:
        with path.open("rb") as f:
            return f.read(4) in _PCAP_MAGICS
    except OSError:
        return False


# ------------------------------------------------------------------ comparison
_GETATTR_VARYING = frozenset(
    {
        "atime_sec", "atime_nsec", "mtime_sec", "mtime_nsec", "ctime_sec", "ctime_nsec",
        "btime_sec", "btime_nsec", "gen", "data_version", "blocks", "blksize",
    }
)  # fmt: skip


def _qid(q: M.Qid) -> int:
    return q.type


def normalize(msg: M.Message) -> Any:
    """What of a reply must be equal between the recording and the replay (see the module
    docstring for what is left out and why)."""
    out: list[Any] = [type(msg).__name__]
    if isinstance(msg, M.Rstatfs):
        return out
    if isinstance(msg, M.Rreaddir):
        ents = codec.decode_dirents(msg.data)
        return [*out, sorted((e.name, e.type, e.qid.type) for e in ents)]
    is_dir = isinstance(msg, M.Rgetattr) and msg.mode & 0o170000 == 0o040000
    for a in attrs.fields(type(msg)):
        if a.name == "tag":
            continue
        v = getattr(msg, a.name)
        if isinstance(msg, M.Rgetattr) and (
            a.name in _GETATTR_VARYING or (a.name == "size" and is_dir)
        ):
            continue
        if isinstance(v, M.Qid):
            v = _qid(v)
        elif isinstance(v, list) and v and isinstance(v[0], M.Qid):
            v = [_qid(q) for q in v]
        elif isinstance(v, memoryview | bytearray):
            v = bytes(v)
        out.append((a.name, v))
    return out


def _describe(raw: bytes) -> str:
    try:
        text = repr(codec.decode(raw))
    except codec.ProtocolError as e:
        text = f"undecodable {raw[:32].hex()} ({e})"
    return text if len(text) <= 300 else text[:300] + "..."


# ---------------------------------------------------------------------- replay
@attrs.define
class _Request:
    conn: int
    frame: Frame
    tag: int
    reply: Frame | None = None  # the recorded one
    got: bytes | None = None  # the replay's
    flushed: bool = False  # a later Tflush named it: its reply is not compared
    deps: int = 0  # recorded replies (of any connection) the client had seen before it


@attrs.define
class _Plan:
    requests: list[_Request]
    replies: list[_Request]  # requests in the order their recorded replies appear
    connections: int
    msize: int


def plan(frames: list[Frame]) -> _Plan:
    """Pair requests with their recorded replies and work out what each request waited for."""
    if any(len(f.data) < f.size for f in frames):
        raise ReplayError("a headers-only recording: names and data were not recorded")
    requests: list[_Request] = []
    pending: dict[tuple[int, int], _Request] = {}
    replies: list[_Request] = []
    msize = 0
    conns = 0
    # requests in the order their first byte appears, with the replies seen before it
    seen = 0
    ordered = sorted(
        frames, key=lambda f: (f.first if f.from_client else f.last, not f.from_client)
    )
    for f in ordered:
        conns = max(conns, f.conn + 1)
        tag = struct.unpack_from("<H", f.data, 5)[0]
        if f.from_client:
            r = _Request(f.conn, f, tag, deps=seen)
            requests.append(r)
            pending[f.conn, tag] = r
            if f.data[4] == C.MsgType.TFLUSH:
                old = pending.get((f.conn, struct.unpack_from("<H", f.data, 7)[0]))
                if old is not None and old is not r:
                    old.flushed = True
        else:
            r2 = pending.pop((f.conn, tag), None)
            if r2 is None:
                continue  # a reply to nothing we know: not compared
            r2.reply = f
            replies.append(r2)
            seen += 1
            if f.data[4] == C.MsgType.RVERSION:
                msize = max(msize, struct.unpack_from("<I", f.data, 7)[0])
    return _Plan(requests, replies, conns, msize or (1 << 20))


class _Replay:
    def __init__(self, p: _Plan, timeout: float) -> None:
        self.plan = p
        self.timeout = timeout
        self.answered = 0  # prefix of plan.replies that the replay has answered
        self.progress = trio.Event()
        self.difference: str | None = None
        self.cookies: list[dict[int, int]] = [{} for _ in range(p.connections)]
        self.inflight: list[dict[int, _Request]] = [{} for _ in range(p.connections)]

    def _advance(self) -> None:
        replies = self.plan.replies
        while self.answered < len(replies) and (
            replies[self.answered].got is not None or replies[self.answered].flushed
        ):
            self.answered += 1
        self.progress.set()
        self.progress = trio.Event()

    def _differ(self, text: str) -> None:
        if self.difference is None:
            self.difference = text

    def _compare(self, r: _Request, got: bytes) -> None:
        r.got = got
        if r.reply is None or r.flushed:
            return
        want = r.reply.data
        try:
            a, b = codec.decode(want), codec.decode(got)
        except codec.ProtocolError:
            same = want == got
        else:
            same = normalize(a) == normalize(b)
            if same and isinstance(a, M.Rreaddir) and isinstance(b, M.Rreaddir):
                self._map_cookies(r.conn, a, b)
        if not same:
            self._differ(
                f"connection {r.conn}, request {_describe(r.frame.data)}:\n"
                f"  recorded {_describe(want)}\n  replayed {_describe(got)}"
            )

    def _map_cookies(self, conn: int, a: M.Rreaddir, b: M.Rreaddir) -> None:
        theirs = {e.name: e.offset for e in codec.decode_dirents(b.data)}
        for e in codec.decode_dirents(a.data):
            if e.name in theirs:
                self.cookies[conn][e.offset] = theirs[e.name]

    async def reader(self, conn: int, stream: trio.SocketStream) -> None:
        buf = bytearray()
        while True:
            size, mtype, tag = next_frame(buf, 0, len(buf), 1 << 30)
            if mtype == NEED_DATA:
                chunk = await stream.receive_some(1 << 20)
                if not chunk:
                    return
                buf += chunk
                continue
            if mtype < 0:
                self._differ(f"connection {conn}: the server sent a frame of size {size}")
                return
            raw = bytes(buf[:size])
            del buf[:size]
            r = self.inflight[conn].pop(tag, None)
            if r is None:
                self._differ(f"connection {conn}: a reply to no request: {_describe(raw)}")
                continue
            self._compare(r, raw)
            if mtype == C.MsgType.RFLUSH:
                old = struct.unpack_from("<H", r.frame.data, 7)[0]
                flushed = self.inflight[conn].pop(old, None)
                if flushed is not None:
                    flushed.flushed = True
            self._advance()

    async def sender(self, streams: list[trio.SocketStream]) -> None:
        for r in self.plan.requests:
            with trio.move_on_after(self.timeout) as waited:
                while self.answered < r.deps and self.difference is None:
                    await self.progress.wait()
            if self.difference is not None:
                return
            if waited.cancelled_caught:
                late = self.plan.replies[self.answered]
                self._differ(
                    f"connection {late.conn}: no reply within {self.timeout:g} s to "
                    f"{_describe(late.frame.data)} (recorded {_describe(late.reply.data)})"
                    if late.reply is not None
                    else "timed out"
                )
                return
            data = r.frame.data
            if data[4] == C.MsgType.TREADDIR and len(data) >= 19:
                off = _TREADDIR_OFFSET.unpack_from(data, 11)[0]
                mapped = self.cookies[r.conn].get(off)
                if mapped is not None and mapped != off:
                    data = data[:11] + _TREADDIR_OFFSET.pack(mapped) + data[19:]
            self.inflight[r.conn][r.tag] = r
            await streams[r.conn].send_all(data)
        # the last replies
        with trio.move_on_after(self.timeout):
            while self.answered < len(self.plan.replies) and self.difference is None:
                await self.progress.wait()
        if self.answered < len(self.plan.replies) and self.difference is None:
            late = self.plan.replies[self.answered]
            self._differ(
                f"connection {late.conn}: no reply within {self.timeout:g} s to "
                f"{_describe(late.frame.data)}"
            )


async def _run(p: _Plan, export: Path, timeout: float) -> _Replay:
    point = AttachPoint.open(str(export))
    replay = _Replay(p, timeout)
    config = ServerConfig(max_msize=p.msize, connections=max(2, p.connections))
    try:
        async with trio.open_nursery() as nursery:
            streams = []
            for i in range(p.connections):
                a, b = socket.socketpair()
                nursery.start_soon(_serve_closing, a, point, config, f"replay{i}")
                s = trio.SocketStream(trio.socket.from_stdlib_socket(b))
                streams.append(s)
                nursery.start_soon(replay.reader, i, s)
            await replay.sender(streams)
            for s in streams:
                await s.send_eof()  # the server ends at EOF, then each reader at ours
        for s in streams:
            await s.aclose()
    finally:
        point.close()
    return replay


async def _serve_closing(
    sock: socket.socket, point: AttachPoint, config: ServerConfig, name: str
) -> None:
    try:
        await serve(sock, point, config, name=name)
    finally:
        sock.close()


def replay_recording(
    path: Path, *, export_from: Path | None = None, timeout: float = 5.0
) -> str | None:
    """Replay one recording on a scratch export; None when every reply matched, else the
    first difference.  Raises :class:`ReplayError` when it cannot be replayed."""
    try:
        p = plan(read_frames(read_pcap(path.read_bytes())))
    except PcapError as e:
        raise ReplayError(str(e)) from None
    if not p.requests:
        raise ReplayError("no 9P request in it")
    with tempfile.TemporaryDirectory(prefix="gofer9p-replay-") as tmp:
        export = Path(tmp) / "export"
        if export_from is not None:
            # cp -a: modes, owners, times, xattrs, hard links and special files as they were
            subprocess.run(["cp", "-a", "--", str(export_from), str(export)], check=True)
        else:
            export.mkdir()
            export.chmod(0o755)
        replay = trio.run(_run, p, export, timeout)
        shutil.rmtree(export, ignore_errors=True)
    return replay.difference


def replay_files(paths: Sequence[Path], *, export_from: Path | None, timeout: float) -> int:
    """``python -m fuzz replay REC.pcap ...``: one line per recording; the exit status."""
    status = 0
    for path in paths:
        try:
            diff = replay_recording(path, export_from=export_from, timeout=timeout)
        except ReplayError as e:
            print(f"ERROR {path}: {e}")
            status = max(status, 2)
            continue
        if diff is None:
            print(f"ok   {path}: every recorded reply matched")
        else:
            print(f"FAIL {path}: first difference: {diff}")
            status = max(status, 1)
    return status
