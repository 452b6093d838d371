"""A blocking raw 9P connection that records what it sends, and the reply checks.

Why blocking sockets and not ``gofer9p.client``: hypothesis state machines are
synchronous, and a fuzzer needs to send bytes the trio client would never
produce (lying sizes, duplicate tags, half frames).  Every connection keeps a
*transcript*: each chunk it sent plus what it expected back (a reply with a
given tag and outcome, or the server closing the stream).  A transcript is
exactly what a reproducer file holds, so any failure found by any fuzzer can
be saved and replayed against any target with ``python -m fuzz replay FILE``.

Reproducer format (``fuzz/corpus/crashes/<name>.bin``)::

    b"GOFER9P-FUZZ 1\\n"  then records:  op[1] length[u32 le] payload
    N  new connection (the previous one is closed)
    S  send payload bytes as one chunk
    R  expect one reply: tag[u16] request-type[u16] outcome[u8] [b"D" data]
       (type 0xFFFF = not checked; outcome 0 any, 1 success, 2 Rlerror;
       data, if present, must equal the Rread payload)
    E  half-close (EOF) and expect the server to close within the timeout
    X  expect the server to close (framing error) without our EOF
    C  close abruptly

A ``<name>.json`` beside it says what failed originally.
"""

from __future__ import annotations

import errno
import json
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import DECODERS, ProtocolError, decode, encode

MAGIC = b"GOFER9P-FUZZ 1\n"
_REC = struct.Struct("<cI")
_EXPECT = struct.Struct("<HHB")
ANY_TYPE = 0xFFFF
_HDR = struct.Struct("<IBH")

ANY, OK, ERR = 0, 1, 2
"""Expected outcome of a request: anything valid, success (T+1), Rlerror."""

# The errno values a 9P2000.L gofer may legitimately put in Rlerror.  Each is
# something the host kernel returns for the *at calls the attach layer makes,
# or a limit the server enforces (design.md section 4).  Anything outside this
# set (0, a negative-looking number, EINTR leaking out of a retry loop, a
# BSD/9P2000.u code) is reported as an "unknown errno" failure.
ALLOWED_ERRNOS: frozenset[int] = frozenset(
    {
        errno.EPERM,  # chown/chmod not permitted, removing the attach root
        errno.ENOENT,  # walk/open/unlink of a missing name
        errno.EIO,  # server-side internal error (also logged as a bug)
        errno.ENXIO,  # open of a FIFO with O_NONBLOCK|O_WRONLY and no reader
        errno.E2BIG,  # caps: too many walk names, xattr too large
        errno.EBADF,  # unknown fid, fid not opened for that mode
        errno.EAGAIN,  # non-blocking lock/FIFO I/O would block
        errno.ENOMEM,  # allocation refused by the host
        errno.EACCES,  # permission denied on the host
        errno.EBUSY,  # rename/remove of a mount point or the root
        errno.EEXIST,  # create/mkdir of an existing name, fid already in use
        errno.EXDEV,  # rename across devices / attach points
        errno.ENODEV,  # xattr namespace not supported here
        errno.ENOTDIR,  # walk through / create in a non-directory
        errno.EISDIR,  # write-open of a directory, unlink of a directory
        errno.EINVAL,  # bad names, bad flags, malformed message
        errno.ENFILE,  # host out of file descriptors
        errno.EMFILE,  # fid cap per connection
        errno.ETXTBSY,  # write-open of a running executable
        errno.EFBIG,  # write/truncate past the file size limit
        errno.ENOSPC,  # host disk full
        errno.ESPIPE,  # positional I/O on a FIFO/socket
        errno.EPIPE,  # write to a FIFO whose last reader closed (found by fuzz/race.py)
        errno.EROFS,  # mutating request on a read-only attach point
        errno.EMLINK,  # too many links
        errno.ERANGE,  # xattr value larger than the caller's size
        errno.EDEADLK,  # lock would deadlock
        errno.ENAMETOOLONG,  # name longer than NAME_MAX
        errno.ENOLCK,  # no locks available
        errno.ENOSYS,  # operation the host does not implement
        errno.ENOTEMPTY,  # rmdir/rename over a non-empty directory
        errno.ELOOP,  # O_NOFOLLOW open of a symlink, walk through a symlink
        errno.ENODATA,  # missing xattr
        errno.EOVERFLOW,  # offsets that do not fit
        errno.EPROTO,  # request before a successful Tversion
        errno.EOPNOTSUPP,  # unsupported message type, xattrs not supported
        errno.ESTALE,  # fid's file went away under it
        errno.EDQUOT,  # quota
    }
)


class Failure(Exception):
    """An invariant the server broke; ``kind`` is crash, hang, leak or invariant."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class Closed(Failure):
    """The server closed a connection with injected faults (``RawConn.faults``) while a
    reply was due: allowed there (a spliced Rread whose data could not follow its header
    ends the connection), so no finding; a crash it came with is one (the target's log)."""

    def __init__(self, message: str) -> None:
        super().__init__("closed", message)


def expected_reply_types(ttype: int) -> frozenset[int]:
    """Types a server may answer a request of type ``ttype`` with.

    A known T-message gets its R-message or Rlerror; anything else (an
    R-type, a 9P2000/9P2000.u type, an unassigned number) gets Rlerror only.
    """
    if ttype % 2 == 0 and ttype in DECODERS and ttype != C.MsgType.TLERROR:
        return frozenset({ttype + 1, C.MsgType.RLERROR})
    return frozenset({C.MsgType.RLERROR})


def check_reply(
    frame: bytes,
    *,
    tag: int | None = None,
    ttype: int | None = None,
    msize: int | None = None,
    outcome: int = ANY,
) -> M.Message:
    """Decode one reply frame and check the invariants every reply must keep.

    Raises :class:`Failure` ("invariant") when the frame does not decode, is
    not an R-message, has the wrong tag or type, exceeds the negotiated msize,
    carries an errno outside :data:`ALLOWED_ERRNOS`, or contradicts the
    expected ``outcome``.
    """
    where = f"reply {frame[:48].hex()}{'...' if len(frame) > 48 else ''}"
    try:
        msg = decode(frame)
    except ProtocolError as e:
        raise Failure("invariant", f"undecodable {where}: {e}") from None
    rtype = frame[4]
    if rtype % 2 == 0:
        raise Failure("invariant", f"{where}: server sent a T-message type {rtype}")
    if tag is not None and msg.tag != tag:
        raise Failure("invariant", f"{where}: tag {msg.tag}, request tag was {tag}")
    if ttype is not None and rtype not in expected_reply_types(ttype):
        raise Failure("invariant", f"{where}: type {rtype} answers request type {ttype}")
    if msize and len(frame) > msize:
        raise Failure("invariant", f"{where}: {len(frame)} bytes exceeds msize {msize}")
    if isinstance(msg, M.Rlerror):
        if msg.ecode not in ALLOWED_ERRNOS:
            raise Failure(
                "invariant",
                f"{where}: unknown errno {msg.ecode} ({errno.errorcode.get(msg.ecode, '?')}) "
                f"for request type {ttype}",
            )
        if outcome == OK:
            name = errno.errorcode.get(msg.ecode, str(msg.ecode))
            raise Failure("invariant", f"{where}: {name} where success was expected")
    elif outcome == ERR:
        raise Failure("invariant", f"{where}: {type(msg).__name__} where an error was expected")
    return msg


# --------------------------------------------------------------- transcripts
Record = tuple[bytes, bytes]


class Transcript:
    """What one fuzz case sent and expected, in order (see module doc)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def add(self, op: bytes, payload: bytes = b"") -> None:
        self.records.append((op, payload))

    def to_bytes(self) -> bytes:
        out = bytearray(MAGIC)
        for op, payload in self.records:
            out += _REC.pack(op, len(payload)) + payload
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Transcript:
        if not data.startswith(MAGIC):
            raise ValueError("not a gofer9p fuzz reproducer (bad magic)")
        t = cls()
        off = len(MAGIC)
        while off < len(data):
            if off + _REC.size > len(data):
                raise ValueError(f"truncated record header at byte {off}")
            op, n = _REC.unpack_from(data, off)
            off += _REC.size
            if off + n > len(data):
                raise ValueError(f"truncated record payload at byte {off}")
            t.add(op, data[off : off + n])
            off += n
        return t

    def frames_sent(self) -> int:
        return sum(1 for op, _ in self.records if op == b"S")


def save_reproducer(
    directory: Path, name: str, transcript: Transcript | bytes, meta: dict[str, Any]
) -> Path:
    """Write ``<name>.bin`` and its ``.json`` description; return the .bin path.

    ``name`` is the finding's bucket: when the bucket exists, the smaller transcript is kept
    and the ``.json`` is updated (``hits`` + 1, ``last_found``), so one bug is one file.
    ``bytes``: a decode finding, the raw input (no transcript).
    """
    data = transcript if isinstance(transcript, bytes) else transcript.to_bytes()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.bin"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            old = {}
        hits = int(old.get("hits", 1)) + 1
        if len(path.read_bytes()) <= len(data):
            old.update(hits=hits, last_found=meta.get("last_found"))
            meta_path.write_text(json.dumps(old, indent=2, default=str) + "\n")
            return path
        meta = {**meta, "hits": hits, "first_found": old.get("first_found", meta.get("found"))}
        if "status" in old:
            meta["status"] = old["status"]
    path.write_bytes(data)
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


# ----------------------------------------------------------------- connection
class RawConn:
    """One blocking connection; every send and every expectation is recorded.

    ``timeout`` bounds every wait for the server: a reply that does not come
    in time is a ``Failure("hang")``.  The server closing the stream when a
    reply was expected is a ``Failure("invariant")`` (a well-framed request
    must never close the connection).
    """

    def __init__(
        self, sock: socket.socket, transcript: Transcript, timeout: float = 5.0,
        *, faults: bool = False,
    ) -> None:
        self.sock = sock
        self.faults = faults
        """The server may fail any request of this connection on purpose (an injected
        fault, ``Link.faults``): a success is not required, only a valid reply."""
        self.transcript = transcript
        self.timeout = timeout
        self.msize = 0
        self.buf = bytearray()
        self.eof = False
        self.frames_sent = 0
        self.next_tag = 1
        self.closed = False
        sock.setblocking(True)
        transcript.add(b"N")

    # -- bytes
    def send(self, data: bytes, frames: int = 1) -> None:
        self.transcript.add(b"S", data)
        self.frames_sent += frames
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            # the server closed after an earlier bad frame; the expectation
            # records that follow decide whether that was allowed
            self.eof = True

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on EOF.  Raises Failure("hang") at the deadline."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure("hang", f"no reply within {self.timeout:.1f}s")
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            raise Failure("hang", f"no reply within {self.timeout:.1f}s")
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take_frame(self) -> bytes | None:
        if len(self.buf) < 4:
            return None
        (size,) = struct.unpack_from("<I", self.buf)
        if size < 7:
            raise Failure("invariant", f"server sent a frame of size {size}")
        if len(self.buf) < size:
            return None
        frame = bytes(self.buf[:size])
        del self.buf[:size]
        return frame

    def recv_frame(self, *, record: bytes | None = None) -> bytes:
        """The next reply frame.  ``record`` is the R-record payload to log first."""
        self.transcript.add(b"R", record if record is not None else expect_record(None, None))
        deadline = time.monotonic() + self.timeout
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            if not self._fill(deadline):
                msg = "server closed the connection while a reply was expected" + (
                    f" ({len(self.buf)} stray bytes)" if self.buf else ""
                )
                if self.faults:
                    raise Closed(msg)
                raise Failure("invariant", msg)

    def expect_close(self, *, half_close: bool) -> list[bytes]:
        """Wait for the server to close; return any frames it sent first."""
        self.transcript.add(b"E" if half_close else b"X")
        if half_close:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        frames: list[bytes] = []
        deadline = time.monotonic() + self.timeout
        while True:
            while (f := self._take_frame()) is not None:
                frames.append(f)
            if not self._fill(deadline):
                break
        if self.buf:
            raise Failure("invariant", f"server closed mid-frame ({len(self.buf)} stray bytes)")
        return frames

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transcript.add(b"C")
            self.sock.close()

    # -- messages
    def take_tag(self) -> int:
        tag = self.next_tag
        self.next_tag = 1 if tag >= 0xFFFE else tag + 1
        return tag

    def rpc(
        self,
        msg: M.Message,
        *,
        outcome: int = ANY,
        data: bytes | None = None,
        tag: int | None = None,
    ) -> M.Message:
        """Send ``msg`` on a fresh tag (NOTAG for Tversion) and return its checked reply."""
        if tag is None:
            tag = C.NOTAG if isinstance(msg, M.Tversion) else self.take_tag()
        msg.tag = tag  # type: ignore[misc]  # every concrete message has a tag
        self.send(encode(msg))
        return self.expect_reply(tag, msg.TYPE, outcome=outcome, data=data)

    def expected(self, outcome: int) -> int:
        """The outcome a reply must have: a success may be an error where faults are
        injected (``faults``); an expected error stays one."""
        return ANY if self.faults and outcome == OK else outcome

    def expect_reply(
        self, tag: int, ttype: int, *, outcome: int = ANY, data: bytes | None = None
    ) -> M.Message:
        outcome = self.expected(outcome)
        rec = _EXPECT.pack(tag, ttype, outcome) + (b"D" + data if data is not None else b"")
        frame = self.recv_frame(record=rec)
        reply = check_reply(frame, tag=tag, ttype=ttype, msize=self.msize or None, outcome=outcome)
        if data is not None and isinstance(reply, M.Rread) and bytes(reply.data) != data:
            raise Failure(
                "invariant",
                f"read returned {len(reply.data)} bytes {bytes(reply.data)[:32]!r}, "
                f"model says {len(data)} bytes {data[:32]!r}",
            )
        if isinstance(reply, M.Rversion) and reply.version == C.VERSION_9P2000L:
            self.msize = reply.msize
        return reply

    def handshake(self, msize: int = 65536) -> M.Rversion:
        r = self.rpc(M.Tversion(tag=0, msize=msize, version=C.VERSION_9P2000L), outcome=OK)
        assert isinstance(r, M.Rversion)
        if r.version != C.VERSION_9P2000L or r.msize > msize or r.msize < 4096:
            raise Failure("invariant", f"Tversion(msize={msize}, 9P2000.L) answered {r!r}")
        return r


def iter_records(t: Transcript) -> Iterator[Record]:
    return iter(t.records)


def expect_record(tag: int | None, ttype: int | None, outcome: int = ANY) -> bytes:
    """The payload of an R record (None = not checked)."""
    return _EXPECT.pack(
        0xFFFF if tag is None else tag, ANY_TYPE if ttype is None else ttype, outcome
    )


def parse_expect(payload: bytes) -> tuple[int | None, int | None, int, bytes | None]:
    """An R record: (tag, request type, outcome, expected read data); None = unchecked.

    Tag 0xFFFF is ambiguous (NOTAG is a real tag for Tversion); it is checked
    only together with a request type.
    """
    if len(payload) < _EXPECT.size:
        return None, None, ANY, None
    tag, ttype, outcome = _EXPECT.unpack_from(payload)
    rest = payload[_EXPECT.size :]
    data = rest[1:] if rest[:1] == b"D" else None
    if ttype == ANY_TYPE:
        return (None if tag == 0xFFFF else tag), None, outcome, data
    return tag, ttype, outcome, data


def frame_header(frame: bytes) -> tuple[int, int, int] | None:
    """(size, type, tag) of a frame, or None when it is shorter than a header."""
    if len(frame) < 7:
        return None
    size, mtype, tag = _HDR.unpack_from(frame)
    return size, mtype, tag


PREFIX_FID = 0xFFFFFF00
"""The fid a connection attaches with when it must first walk to the export (then clunked)."""


def attach_requests(
    prefix: tuple[bytes, ...] | None, *, uname: bytes = b"root", n_uname: int = 0, fid: int = 0
) -> list[M.Message]:
    """The requests that make ``fid`` the export's root on a connection (``Link.prefix``).

    A connection attached at the export is one Tattach; one attached above it (the daemon's root
    connection) attaches another fid, walks it down to the export and clunks it.  ``None`` (the
    export is not below this attach root): ``fid`` is the attach root itself.
    """
    if not prefix:
        return [M.Tattach(tag=0, fid=fid, afid=C.NOFID, uname=uname, aname=b"", n_uname=n_uname)]
    return [
        M.Tattach(tag=0, fid=PREFIX_FID, afid=C.NOFID, uname=uname, aname=b"", n_uname=n_uname),
        M.Twalk(tag=0, fid=PREFIX_FID, newfid=fid, wnames=list(prefix)),
        M.Tclunk(tag=0, fid=PREFIX_FID),
    ]
