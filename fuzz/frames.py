"""Malformed-frame fuzzer: hostile bytes on the wire, against a live server.

A sandbox that is compromised controls every byte it sends, so the server's
framing and decoding must survive anything.  Each fuzz *connection* does a
normal set-up (Tversion, Tattach, a file and a directory; one connection in
ten skips it and talks before Tversion), then sends up to 64 mutated frames:
bit flips, interesting bytes, truncated or extended bodies with a fixed-up
size, lying size / count / string-length / nwname fields, huge counts,
splices of two messages, random type bytes and bodies, every type byte 0-255
(a systematic sweep first, then every flag bit and :func:`surface_sweep`), pipelined
bursts, oversized or undersized size
fields, and partial frames followed by EOF.

Expectations are computed from the bytes exactly as the server frames them:
every complete frame with a size in ``[7, msize]`` must get one valid reply
(its tag; ``T+1`` or ``Rlerror``; a known errno); a size outside that range
must make the server close the connection; a partial frame followed by our
EOF must make it close without a reply.  Anything else -- a reply with a
wrong tag, a close on a well-framed request, no reply within the timeout, an
exception or ``internal error`` log in the server -- is a failure, saved as a
reproducer.  After every connection the fuzzer broke, and every 20 others, a
fresh connection must still work (liveness); every 50 connections the server
process's fd count and VmRSS are compared with the baseline.
"""

from __future__ import annotations

import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode
from gofer9p.protocol.framing import FRAMING_ERROR, NEED_DATA, next_frame
from gofer9p.server import PRE_VERSION_FRAME

from .common import (
    STOP,
    Health,
    Known,
    Report,
    last_request,
    liveness,
    minimize_transcript,
    run_deadline,
    save_failure,
    split_problem,
    transcript_units,
)
from .targets import Target
from .wire import (
    Closed,
    Failure,
    RawConn,
    Transcript,
    check_reply,
    expect_record,
    expected_reply_types,
)

_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_HDR = struct.Struct("<IBH")

INTERESTING_U32 = (
    0,
    1,
    2,
    7,
    16,
    17,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFE,
    0xFFFFFFFF,
)
INTERESTING_U16 = (0, 1, 2, 15, 16, 17, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_U8 = (0, 1, 0x7F, 0x80, 0xFE, 0xFF)

FILE = b"fz-file"
DIR = b"fz-dir"
ROOT, CLONE, OPENED, SUBDIR = 0, 1, 2, 3
"""Fids set up on every connection (see ``_setup``)."""


@dataclass
class Span:
    """Where one field of a frame's body sits: ``code`` as in ``Message.FIELDS``."""

    name: str
    code: str
    off: int
    size: int


def field_spans(cls: type[M.Message], frame: bytes) -> list[Span]:
    """Locate each field of a well-formed ``frame`` of ``cls`` (for lying-field mutations)."""
    spans: list[Span] = []
    off = 7
    fixed = {"b": 1, "w": 2, "d": 4, "q": 8, "Q": 13}
    for item in cls.FIELDS.split():
        name, code = item.split(":")
        if code in fixed:
            spans.append(Span(name, code, off, fixed[code]))
            off += fixed[code]
        elif code == "s":
            (n,) = _U16.unpack_from(frame, off)
            spans.append(Span(name, code, off, 2 + n))
            off += 2 + n
        elif code == "S*":
            (count,) = _U16.unpack_from(frame, off)
            start = off
            off += 2
            for _ in range(count):
                (n,) = _U16.unpack_from(frame, off)
                off += 2 + n
            spans.append(Span(name, code, start, off - start))
        elif code == "Q*":
            (count,) = _U16.unpack_from(frame, off)
            spans.append(Span(name, code, off, 2 + 13 * count))
            off += 2 + 13 * count
        elif code == "D":
            (n,) = _U32.unpack_from(frame, off)
            spans.append(Span(name, code, off, 4 + n))
            off += 4 + n
    return spans


def templates(rng: random.Random) -> list[M.Message]:
    """One plausible instance of every T-message, aimed at the set-up fids."""

    def fid() -> int:
        return rng.choice((ROOT, CLONE, OPENED, SUBDIR, ROOT, CLONE, OPENED, 7, 99, C.NOFID))

    def name() -> bytes:
        return rng.choice(
            (
                b"a",
                b"n" * rng.randint(1, 40),
                FILE,
                DIR,
                b"..",
                b".",
                b"",
                b"x/y",
                b"\xff\xfe",
                b"a\x00b",
                b"z" * 300,
            )
        )

    return [
        M.Tstatfs(tag=0, fid=fid()),
        M.Tlopen(tag=0, fid=fid(), flags=rng.choice((0, 1, 2, 0o1002, 0o200000, 0o4000))),
        M.Tlcreate(tag=0, fid=CLONE, name=name(), flags=0o102, mode=0o644, gid=0),
        M.Tsymlink(
            tag=0, fid=fid(), name=name(), symtgt=rng.choice((b"/etc", b"../..", b"t")), gid=0
        ),
        M.Tmknod(tag=0, dfid=fid(), name=name(), mode=0o100644, major=0, minor=0, gid=0),
        M.Trename(tag=0, fid=fid(), dfid=fid(), name=name()),
        M.Treadlink(tag=0, fid=fid()),
        M.Tgetattr(tag=0, fid=fid(), request_mask=C.GETATTR_ALL),
        M.Tsetattr(
            tag=0,
            fid=fid(),
            valid=rng.choice((0x1, 0x8, 0x30, 0x1B0, 0x1FF)),
            mode=0o644,
            uid=0,
            gid=0,
            size=rng.choice((0, 5, 4096)),
            atime_sec=1,
            atime_nsec=2,
            mtime_sec=3,
            mtime_nsec=4,
        ),
        M.Txattrwalk(
            tag=0,
            fid=fid(),
            newfid=rng.choice((5, 6, CLONE)),
            name=rng.choice((b"", b"user.fz", b"security.capability", b"trusted.x")),
        ),
        M.Txattrcreate(
            tag=0,
            fid=fid(),
            name=rng.choice((b"user.fz", b"user.", b"bogus")),
            attr_size=rng.choice((0, 4, 65536, 65537, 1 << 40)),
            flags=rng.randint(0, 3),
        ),
        M.Treaddir(
            tag=0, fid=fid(), offset=rng.choice((0, 1, 1 << 63)), count=rng.choice((0, 24, 4000))
        ),
        M.Tfsync(tag=0, fid=fid(), datasync=rng.randint(0, 1)),
        M.Tlock(
            tag=0,
            fid=fid(),
            type=rng.randint(0, 3),
            flags=rng.randint(0, 3),
            start=0,
            length=rng.choice((0, 10, 1 << 63)),
            proc_id=1,
            client_id=b"fz",
        ),
        M.Tgetlock(
            tag=0, fid=fid(), type=rng.randint(0, 3), start=0, length=10, proc_id=1, client_id=b"fz"
        ),
        M.Tlink(tag=0, dfid=fid(), fid=fid(), name=name()),
        M.Tmkdir(tag=0, dfid=fid(), name=name(), mode=0o755, gid=0),
        M.Trenameat(tag=0, olddirfid=fid(), oldname=name(), newdirfid=fid(), newname=name()),
        M.Tunlinkat(tag=0, dirfid=fid(), name=name(), flags=rng.choice((0, C.AT_REMOVEDIR, 1))),
        M.Tversion(
            tag=C.NOTAG,
            msize=rng.choice((4096, 65536, 0xFFFFFFFF, 100)),
            version=rng.choice((b"9P2000.L", b"9P2000", b"9P2000.L.x")),
        ),
        M.Tauth(tag=0, afid=fid(), uname=b"root", aname=b"", n_uname=0),
        M.Tattach(
            tag=0,
            fid=rng.choice((ROOT, 8, 9)),
            afid=rng.choice((C.NOFID, 0)),
            uname=b"root",
            aname=rng.choice((b"", b"/", b"..")),
            n_uname=0,
        ),
        M.Tflush(tag=0, oldtag=rng.randint(0, 0xFFFF)),
        M.Twalk(
            tag=0,
            fid=fid(),
            newfid=rng.choice((4, 5, CLONE, ROOT)),
            wnames=[name() for _ in range(rng.choice((0, 1, 2, 16, 17)))],
        ),
        M.Tread(
            tag=0,
            fid=fid(),
            offset=rng.choice((0, 3, 1 << 62)),
            count=rng.choice((0, 1, 100, 65536, 0xFFFFFFFF)),
        ),
        M.Twrite(
            tag=0,
            fid=fid(),
            offset=rng.choice((0, 3, 1 << 40)),
            data=rng.randbytes(rng.choice((0, 1, 10, 200))),
        ),
        M.Tclunk(tag=0, fid=rng.choice((4, 5, 6, 7, 99))),
        M.Tremove(tag=0, fid=rng.choice((4, 5, 6))),
    ]


def flag_sweep() -> list[list[M.Message]]:
    """Every flag bit of every 9P2000.L request that has flags, one pipelined group each.

    Sent after the type sweep, against the set-up fids (a fresh fid 9 is walked, used and
    clunked where the request consumes its fid): Tlopen and Tlcreate flags, Tsetattr valid,
    Tgetattr request_mask, Tunlinkat flags, Tlock/Tgetlock types and flags, Txattrcreate
    flags, Tmknod file types, Tfsync datasync.  Each must get a valid reply.
    """
    out: list[list[M.Message]] = []
    fresh = 9
    for bit in range(32):
        v = 1 << bit
        out.append(
            [
                M.Twalk(tag=0, fid=ROOT, newfid=fresh, wnames=[FILE]),
                M.Tlopen(tag=0, fid=fresh, flags=v),
                M.Tclunk(tag=0, fid=fresh),
            ]
        )
        out.append(
            [
                M.Twalk(tag=0, fid=ROOT, newfid=fresh, wnames=[]),
                M.Tlcreate(tag=0, fid=fresh, name=b"flag-%d" % bit, flags=v | 2, mode=0o644, gid=0),
                M.Tclunk(tag=0, fid=fresh),
                M.Tunlinkat(tag=0, dirfid=ROOT, name=b"flag-%d" % bit, flags=0),
            ]
        )
        out.append(
            [
                M.Tsetattr(
                    tag=0,
                    fid=OPENED,
                    valid=v,
                    mode=0o644,
                    uid=0,
                    gid=0,
                    size=48,
                    atime_sec=1,
                    atime_nsec=2,
                    mtime_sec=3,
                    mtime_nsec=4,
                ),
                M.Tunlinkat(tag=0, dirfid=ROOT, name=b"no-such", flags=v),
                M.Tlock(
                    tag=0,
                    fid=OPENED,
                    type=bit % 4,
                    flags=v,
                    start=0,
                    length=10,
                    proc_id=1,
                    client_id=b"fz",
                ),
                M.Tgetlock(
                    tag=0, fid=OPENED, type=bit % 4, start=0, length=v, proc_id=1, client_id=b"fz"
                ),
                M.Tfsync(tag=0, fid=OPENED, datasync=v),
            ]
        )
        out.append(
            [
                M.Twalk(tag=0, fid=ROOT, newfid=fresh, wnames=[FILE]),
                M.Txattrcreate(tag=0, fid=fresh, name=b"user.flag", attr_size=0, flags=v),
                M.Tclunk(tag=0, fid=fresh),
            ]
        )
    for bit in range(64):
        out.append([M.Tgetattr(tag=0, fid=OPENED, request_mask=1 << bit)])
    for ftype in range(16):
        out.append(
            [
                M.Tmknod(
                    tag=0,
                    dfid=ROOT,
                    name=b"node-%d" % ftype,
                    mode=(ftype << 12) | 0o644,
                    major=1,
                    minor=3,
                    gid=0,
                ),
                M.Tunlinkat(tag=0, dirfid=ROOT, name=b"node-%d" % ftype, flags=0),
            ]
        )
    return out


def surface_sweep() -> list[list[M.Message]]:
    """Pipelined groups that reach what random frames seldom do, sent after the flag sweep on
    every run (each request must still get a valid reply):

    * an xattr of a few KB written, then read back with the largest counts (the reply sized
      from the buffer: an msize of 64 KiB or more takes the big-read path), past its end too;
    * a directory opened and read with ``Tread`` (EISDIR) and with cookies past 2**63;
    * byte-range locks of one owner that merge, split and release ranges; a read lock on a
      write-only open and a write lock on a read-only one (EBADF); 1,100 disjoint ranges of
      one owner (past the per-owner bound: ENOLCK); a second owner on one open fid;
    * an xattr set on a symlink (no fd to set it through: EOPNOTSUPP at the clunk);
    * two truncating opens of one fid pipelined (both go to worker threads: one wins);
    * a non-root attach (uid 1000) that creates a set-uid, set-gid file, writes to it and
      truncates it through another fid (set-id bits cleared as a write by that uid does);
    * 1,000 reads of 64 KiB of a 128 KiB file (spliced: file -> pipe -> socket), and 300 mode
      changes of a file, a directory and a FIFO: on the ``fault`` target, enough calls that
      its schedule makes a splice fail with EINVAL (the copying fall-back) and fchmodat2 with
      ENOSYS (the older kernel's path) in every run;
    * 2,048 walks of 32 bytes each in one burst: the server's receive buffer is filled to the
      byte, frame after frame, so it grows (a pipelining client);
    * 130 xattr buffers of 64 KiB on one connection: past the session's 8 MiB (ENOMEM).
    """
    f9, f10, f11, f12, f13 = 9, 10, 11, 12, 13

    def setattr(fid: int, valid: int, mode: int = 0o644, size: int = 0) -> M.Message:
        return M.Tsetattr(tag=0, fid=fid, valid=valid, mode=mode, uid=0, gid=0, size=size,
                          atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)

    def lock(fid: int, ltype: int, start: int, length: int, proc: int = 7) -> M.Message:
        return M.Tlock(tag=0, fid=fid, type=ltype, flags=0, start=start, length=length,
                       proc_id=proc, client_id=b"sweep")

    wr, rd, un = C.LOCK_TYPE_WRLCK, C.LOCK_TYPE_RDLCK, 2
    big = b"x" * 3000
    modes = [(OPENED, 0o640), (SUBDIR, 0o750), (f9, 0o620)]
    return [
        [
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[FILE]),
            M.Txattrcreate(tag=0, fid=f9, name=b"user.big", attr_size=len(big), flags=0),
            M.Twrite(tag=0, fid=f9, offset=0, data=big),
            M.Tclunk(tag=0, fid=f9),
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[FILE]),
            M.Txattrwalk(tag=0, fid=f9, newfid=f10, name=b"user.big"),
            M.Tread(tag=0, fid=f10, offset=0, count=0xFFFFFFFF),
            M.Tread(tag=0, fid=f10, offset=100, count=70000),
            M.Tread(tag=0, fid=f10, offset=5000, count=0xFFFFFFFF),
            M.Tclunk(tag=0, fid=f10),
            M.Tclunk(tag=0, fid=f9),
        ],
        [
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[]),
            M.Tlopen(tag=0, fid=f9, flags=C.L_O_DIRECTORY),
            M.Tread(tag=0, fid=f9, offset=0, count=0xFFFFFFFF),
            M.Treaddir(tag=0, fid=f9, offset=1 << 63, count=4000),
            M.Treaddir(tag=0, fid=f9, offset=(1 << 64) - 1, count=4000),
            M.Tclunk(tag=0, fid=f9),
        ],
        [
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[FILE]),
            M.Tlopen(tag=0, fid=f9, flags=C.L_O_RDWR),
            lock(f9, wr, 0, 100), lock(f9, wr, 200, 100), lock(f9, wr, 50, 100),
            lock(f9, un, 20, 250), lock(f9, un, 400, 10), lock(f9, rd, 10, 5),
            lock(f9, wr, 500, 10, proc=8), lock(f9, un, 0, 0, proc=8), lock(f9, un, 0, 0),
            M.Tclunk(tag=0, fid=f9),
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[FILE]),
            M.Tlopen(tag=0, fid=f9, flags=C.L_O_WRONLY),
            lock(f9, rd, 0, 10),
            M.Tclunk(tag=0, fid=f9),
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[FILE]),
            M.Tlopen(tag=0, fid=f9, flags=C.L_O_RDONLY),
            lock(f9, wr, 0, 10),
            M.Tclunk(tag=0, fid=f9),
        ],
        [
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[FILE]),
            M.Tlopen(tag=0, fid=f9, flags=C.L_O_RDWR),
            *(lock(f9, rd, 2 * i, 1) for i in range(1100)),
            M.Tclunk(tag=0, fid=f9),
        ],
        [
            M.Tsymlink(tag=0, fid=ROOT, name=b"sweep-link", symtgt=b"t", gid=0),
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[b"sweep-link"]),
            M.Txattrcreate(tag=0, fid=f9, name=b"user.l", attr_size=1, flags=0),
            M.Twrite(tag=0, fid=f9, offset=0, data=b"l"),
            M.Tclunk(tag=0, fid=f9),
            M.Tunlinkat(tag=0, dirfid=ROOT, name=b"sweep-link", flags=0),
        ],
        [
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[FILE]),
            M.Tlopen(tag=0, fid=f9, flags=C.L_O_RDWR | C.L_O_TRUNC),
            M.Tlopen(tag=0, fid=f9, flags=C.L_O_RDWR | C.L_O_TRUNC),
            M.Tclunk(tag=0, fid=f9),
        ],
        [
            M.Tattach(tag=0, fid=f11, afid=C.NOFID, uname=b"sweep", aname=b"", n_uname=1000),
            M.Twalk(tag=0, fid=f11, newfid=f12, wnames=[]),
            M.Tlcreate(tag=0, fid=f12, name=b"sweep-setid", flags=C.L_O_RDWR, mode=0o6775, gid=0),
            setattr(f12, C.SETATTR_MODE, mode=0o6775),
            M.Twrite(tag=0, fid=f12, offset=0, data=b"clears set-id"),
            setattr(f12, C.SETATTR_MODE, mode=0o6775),
            M.Twalk(tag=0, fid=f11, newfid=f13, wnames=[b"sweep-setid"]),
            setattr(f13, C.SETATTR_SIZE, size=3),
            M.Tclunk(tag=0, fid=f13),
            M.Tclunk(tag=0, fid=f12),
            M.Tunlinkat(tag=0, dirfid=f11, name=b"sweep-setid", flags=0),
            M.Tclunk(tag=0, fid=f11),
        ],
        [
            M.Twrite(tag=0, fid=OPENED, offset=0, data=bytes(range(256)) * 512),
            *(M.Tread(tag=0, fid=OPENED, offset=(i * 4096) % 65536, count=65536)
              for i in range(1000)),
            setattr(OPENED, C.SETATTR_SIZE, size=48),
        ],
        [
            M.Tmknod(tag=0, dfid=ROOT, name=b"sweep-fifo", mode=0o10644, major=0, minor=0,
                     gid=0),
            M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[b"sweep-fifo"]),
            *(setattr(fid, C.SETATTR_MODE, mode=mode ^ (i & 1) << 2)
              for i in range(100) for fid, mode in modes),
            M.Tclunk(tag=0, fid=f9),
            M.Tunlinkat(tag=0, dirfid=ROOT, name=b"sweep-fifo", flags=0),
        ],
        [M.Twalk(tag=0, fid=ROOT, newfid=f9, wnames=[b"no-such-name1"]) for _ in range(2048)],
        [
            *(M.Twalk(tag=0, fid=ROOT, newfid=100 + i, wnames=[FILE]) for i in range(130)),
            *(M.Txattrcreate(tag=0, fid=100 + i, name=b"user.cap", attr_size=65536, flags=0)
              for i in range(130)),
            *(M.Tclunk(tag=0, fid=100 + i) for i in range(130)),
        ],
    ]


def _fix_size(frame: bytearray | bytes) -> bytes:
    b = bytearray(frame)
    if len(b) >= 4:
        _U32.pack_into(b, 0, len(b))
    return bytes(b)


class Mutator:
    """Turns valid frames into hostile ones.  Each method returns bytes to send."""

    def __init__(self, rng: random.Random, msize: int) -> None:
        self.rng = rng
        self.msize = msize

    def frame(self, msg: M.Message, tag: int) -> bytes:
        msg.tag = tag  # type: ignore[misc]  # every concrete message has a tag
        return encode(msg)

    def bitflip(self, f: bytes) -> bytes:
        b = bytearray(f)
        for _ in range(self.rng.randint(1, 8)):
            pos = self.rng.randrange(4, len(b))
            b[pos] ^= 1 << self.rng.randrange(8)
        return _fix_size(b)

    def interesting_byte(self, f: bytes) -> bytes:
        b = bytearray(f)
        for _ in range(self.rng.randint(1, 4)):
            b[self.rng.randrange(4, len(b))] = self.rng.choice(INTERESTING_U8)
        return _fix_size(b)

    def truncate_body(self, f: bytes) -> bytes:
        return _fix_size(f[: self.rng.randint(7, max(7, len(f) - 1))])

    def extend_body(self, f: bytes) -> bytes:
        return _fix_size(f + self.rng.randbytes(self.rng.randint(1, 64)))

    def lie_field(self, f: bytes, cls: type[M.Message]) -> bytes:
        """Set a length/count field (string length, nwname, data count, any int) to a lie."""
        spans = field_spans(cls, f)
        if not spans:
            return self.extend_body(f)
        sp = self.rng.choice(spans)
        b = bytearray(f)
        if sp.code in ("s", "S*", "Q*", "w"):
            (cur,) = _U16.unpack_from(b, sp.off)
            v = self.rng.choice((*INTERESTING_U16, (cur + 1) & 0xFFFF, max(cur - 1, 0)))
            _U16.pack_into(b, sp.off, v)
        elif sp.code in ("D", "d"):
            (cur,) = _U32.unpack_from(b, sp.off)
            v = self.rng.choice((*INTERESTING_U32, (cur + 1) & 0xFFFFFFFF, max(cur - 1, 0)))
            _U32.pack_into(b, sp.off, v)
        elif sp.code == "q":
            struct.pack_into("<Q", b, sp.off, self.rng.choice((0, 1 << 63, (1 << 64) - 1, 1 << 32)))
        elif sp.code == "b":
            b[sp.off] = self.rng.choice(INTERESTING_U8)
        elif sp.code == "Q":
            b[sp.off : sp.off + 13] = self.rng.randbytes(13)
        return _fix_size(b)

    def splice(self, f: bytes, g: bytes) -> bytes:
        cut_f = self.rng.randint(7, len(f))
        cut_g = self.rng.randint(7, len(g))
        return _fix_size(f[:cut_f] + g[cut_g:])

    def type_swap(self, f: bytes, mtype: int | None = None) -> bytes:
        b = bytearray(f)
        b[4] = self.rng.randrange(256) if mtype is None else mtype
        return bytes(b)

    def random_frame(self, tag: int, mtype: int | None = None) -> bytes:
        body = self.rng.randbytes(self.rng.choice((0, 1, 2, 4, 8, 13, 16, 30, 64, 200)))
        t = self.rng.randrange(256) if mtype is None else mtype
        return _HDR.pack(7 + len(body), t, tag) + body

    def huge_walk(self, tag: int) -> bytes:
        n = self.rng.choice((17, 18, 100, 0xFFFF))
        names = [b"a"] * min(n, 200)
        body = struct.pack("<IIH", ROOT, 4, n) + b"".join(_U16.pack(1) + x for x in names)
        return _HDR.pack(7 + len(body), C.MsgType.TWALK, tag) + body

    def oversize(self, tag: int, server_max: int) -> bytes:
        size = self.rng.choice(
            (self.msize + 1, server_max + 1, 0xFFFFFFFF, 0x80000000, self.msize + 4096)
        )
        if size <= server_max and size <= self.msize:
            size = self.msize + 1
        return _HDR.pack(size, self.rng.choice((116, 118, 100, 110)), tag) + self.rng.randbytes(
            self.rng.randint(0, 32)
        )

    def undersize(self, tag: int) -> bytes:
        return _HDR.pack(self.rng.randint(0, 6), self.rng.randrange(256), tag) + b"\0" * 8

    def lie_size(self, f: bytes) -> bytes:
        """A size field that disagrees with the bytes: desynchronises the stream."""
        b = bytearray(f)
        delta = self.rng.choice((-3, -2, -1, 1, 2, 7, 100))
        _U32.pack_into(b, 0, max(0, len(b) + delta))
        return bytes(b)


@dataclass
class StreamPlan:
    """How the server will split ``data``: complete frames, then what is left."""

    frames: list[tuple[int, int, bytes]]  # (type, tag, frame)
    tail: str  # "aligned" | "partial" | "framing_error"


def plan_stream(data: bytes, max_frame: int) -> StreamPlan:
    """Split bytes as the server does: with its framer (``protocol.framing.next_frame``)."""
    frames: list[tuple[int, int, bytes]] = []
    off = 0
    n = len(data)
    while True:
        size, mtype, tag = next_frame(data, off, n, max_frame)
        if mtype == FRAMING_ERROR:
            return StreamPlan(frames, "framing_error")
        if mtype == NEED_DATA:
            return StreamPlan(frames, "aligned" if off == n else "partial")
        frames.append((mtype, tag, data[off : off + size]))
        off += size


def _matches(got: list[tuple[int, int]], want: list[tuple[int, frozenset[int]]]) -> bool:
    """Whether each reply (tag, type) answers a distinct request (bipartite matching).

    Replies may come out of order and tags may repeat in a burst (a duplicate
    tag gets its own Rlerror), so a greedy match is not enough.
    """
    owner: dict[int, int] = {}  # want index -> got index

    def augment(g: int, seen: set[int]) -> bool:
        tag, rtype = got[g]
        for w, (wtag, allowed) in enumerate(want):
            if wtag != tag or rtype not in allowed or w in seen:
                continue
            seen.add(w)
            if w not in owner or augment(owner[w], seen):
                owner[w] = g
                return True
        return False

    return all(augment(g, set()) for g in range(len(got)))


class FrameFuzzer:
    """One run of the frame fuzzer against ``target`` (see module doc)."""

    def __init__(
        self,
        target: Target,
        report: Report,
        *,
        seed: int,
        crash_dir: Path | None,
        timeout: float = 5.0,
        server_max: int | None = None,
        known: Known | None = None,
        shrink: bool = True,
        shrink_s: float = 60.0,
    ) -> None:
        self.known = known or Known()
        self.target = target
        self.report = report
        self.rng = random.Random(seed)
        self.crash_dir = crash_dir
        self.timeout = timeout
        self.server_max = (
            server_max if server_max is not None else getattr(target, "max_msize", 4 << 20)
        )
        self.known_max = hasattr(target, "max_msize")
        self.sweep = list(range(256))
        self.flags = flag_sweep() + surface_sweep()
        self.health = Health(target, report)
        self.mutated = 0
        self.kinds: dict[str, int] = {}
        self.dead = False
        self.shrink = shrink
        self.shrink_s = shrink_s
        self.minimized: set[str] = set()
        self.deadline: float | None = None

    # ---------------------------------------------------------------- setup
    def _setup(self, c: RawConn) -> None:
        """Version, attach, and fids 1 (open file), 2 (clone of root), 3 (subdirectory)."""
        # (any msize now and then: a fault target's schedule is salted by the Tversion)
        rng = self.rng
        msize = rng.choice((4096, 8192, 65536, 65536, 1 << 20, rng.randrange(4096, 1 << 20)))
        # (the sweeps' big reads need 64 KiB and more; the random frames any msize)
        c.handshake(max(msize, 1 << 20) if self.flags else msize)
        c.rpc(
            M.Tattach(tag=0, fid=ROOT, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0), outcome=1
        )
        c.rpc(M.Twalk(tag=0, fid=ROOT, newfid=CLONE, wnames=[]), outcome=1)
        c.rpc(M.Twalk(tag=0, fid=ROOT, newfid=OPENED, wnames=[]), outcome=1)
        c.rpc(M.Tlcreate(tag=0, fid=OPENED, name=FILE, flags=C.L_O_RDWR, mode=0o644, gid=0))
        c.rpc(M.Twrite(tag=0, fid=OPENED, offset=0, data=b"hello, fuzz\n" * 4))
        c.rpc(M.Tmkdir(tag=0, dfid=ROOT, name=DIR, mode=0o755, gid=0))
        c.rpc(M.Twalk(tag=0, fid=ROOT, newfid=SUBDIR, wnames=[DIR]))

    # ------------------------------------------------------------- one step
    def _next_bytes(self, mut: Mutator, tag: int, max_frame: int) -> tuple[str, bytes]:
        rng = self.rng
        if self.sweep:
            t = self.sweep.pop(0)
            cls = M.BY_TYPE.get(t)
            if cls is not None and t % 2 == 0 and rng.random() < 0.5:
                tmpl = [m for m in templates(rng) if m.TYPE == t]
                if tmpl:
                    return "sweep", mut.frame(tmpl[0], tag)
            return "sweep", mut.random_frame(tag, t)
        if self.flags:
            group = self.flags.pop(0)
            return "flags", b"".join(mut.frame(m, (tag + i) & 0xFFFF) for i, m in enumerate(group))
        msgs = templates(rng)
        msg = rng.choice(msgs)
        f = mut.frame(msg, tag)
        k = rng.randrange(100)
        if k < 14:
            return "bitflip", mut.bitflip(f)
        if k < 22:
            return "interesting", mut.interesting_byte(f)
        if k < 30:
            return "truncate", mut.truncate_body(f)
        if k < 35:
            return "extend", mut.extend_body(f)
        if k < 50:
            return "lie_field", mut.lie_field(f, type(msg))
        if k < 56:
            g = mut.frame(rng.choice(msgs), tag)
            return "splice", mut.splice(f, g)
        if k < 62:
            return "type_swap", mut.type_swap(f)
        if k < 67:
            return "random", mut.random_frame(tag)
        if k < 69:
            return "huge_walk", mut.huge_walk(tag)
        if k < 72:
            return "oversize", mut.oversize(tag, self.server_max)
        if k < 74:
            return "undersize", mut.undersize(tag)
        if k < 77:
            return "lie_size", mut.lie_size(f)
        if k < 80:
            return "partial", f[: rng.randint(1, len(f) - 1)]
        if k < 90:
            # a pipelined burst of several (mutated or valid) frames
            parts = []
            for i in range(rng.randint(2, 8)):
                m2 = rng.choice(msgs)
                fr = mut.frame(m2, (tag + i) & 0xFFFF if rng.random() < 0.8 else tag)
                parts.append(mut.bitflip(fr) if rng.random() < 0.5 else fr)
            return "burst", b"".join(parts)
        return "valid", f

    def _send_and_check(self, c: RawConn, data: bytes, max_frame: int) -> str:
        """Send ``data``; check the server's answer.  Returns open, closed or rotate."""
        plan = plan_stream(data, max_frame)
        c.send(data, frames=max(1, len(plan.frames)))
        types = [t for t, _, _ in plan.frames]
        uncertain = C.MsgType.TVERSION in types or (
            len(plan.frames) > 1 and C.MsgType.TFLUSH in types
        )
        if uncertain:
            # a Tversion changes msize and abandons requests, a Tflush may drop a
            # reply: close the stream and accept any valid replies for what was sent
            sent_tags = {tag for _, tag, _ in plan.frames}
            for fr in c.expect_close(half_close=True):
                r = check_reply(fr, msize=max(c.msize, max_frame))
                if r.tag not in sent_tags:
                    raise Failure("invariant", f"reply with tag {r.tag} to no request")
            return "closed"
        if len(plan.frames) == 1:
            mtype, tag, _ = plan.frames[0]
            c.expect_reply(tag, mtype)
        elif plan.frames:
            want = [(tag, expected_reply_types(t)) for t, tag, _ in plan.frames]
            got: list[tuple[int, int]] = []
            for _ in plan.frames:
                fr = c.recv_frame(record=expect_record(None, None))
                r = check_reply(fr, msize=c.msize or None)
                got.append((r.tag, fr[4]))
            if not _matches(got, want):
                raise Failure(
                    "invariant",
                    f"replies {got} (tag, type) do not answer the burst's requests "
                    f"{[(tag, t) for t, tag, _ in plan.frames]}",
                )
        if plan.tail == "framing_error":
            rest = c.expect_close(half_close=False)
            if rest:
                raise Failure("invariant", f"{len(rest)} frames after a framing error")
            return "closed"
        if plan.tail == "partial":
            rest = c.expect_close(half_close=True)
            if rest:
                raise Failure("invariant", f"{len(rest)} replies to a partial frame")
            return "closed"
        return "open"

    # --------------------------------------------------------- a connection
    def connection(self, budget: int) -> int:
        """One fuzz connection; returns the number of mutated frames sent."""
        rng = self.rng
        t = Transcript()
        link = self.target.open()
        self.report.connections += 1
        c = RawConn(link.sock, t, self.timeout, faults=link.faults)
        sent = 0
        broke = False
        failure: Failure | None = None
        try:
            if rng.random() < 0.9:
                self._setup(c)
                max_frame = c.msize
            else:
                max_frame = PRE_VERSION_FRAME  # the server's limit before Tversion
            mut = Mutator(rng, max_frame)
            for _ in range(min(budget, rng.randint(1, 64))):
                tag = rng.choice((rng.randrange(0x10000), 1, 2, 0xFFFF))
                kind, data = self._next_bytes(mut, tag, max_frame)
                if kind == "oversize" and not self.known_max and c.msize == 0:
                    continue
                self.kinds[kind] = self.kinds.get(kind, 0) + 1
                sent += 1
                state = self._send_and_check(c, data, max_frame)
                if state != "open":
                    broke = True
                    break
            if not broke:
                rest = c.expect_close(half_close=True)
                if rest:
                    raise Failure("invariant", f"{len(rest)} unexpected frames at EOF")
        except Failure as f:
            failure = None if isinstance(f, Closed) else f
            broke = True
        finally:
            c.sock.close()
            self.report.frames_sent += c.frames_sent
        problems = [
            p
            for p in link.finish(self.timeout) + self.target.problems()
            if not self.known.match(self.report, p)
        ]
        if failure is not None and self.known.match(self.report, failure.message):
            failure = None
        deaths = [p for p in problems if p.startswith("crash")]
        if failure is not None and deaths:
            failure = None  # the connection broke because the server died: the death is it
        if failure is not None:
            self._save(failure, t)
        for p in problems:
            kind, msg = split_problem(p)
            if "SIGSYS" in msg or "signal" in msg:
                msg += f" (last request {last_request(t)})"
            self._save(Failure(kind, msg), t)
        if broke or failure or problems or self.report.connections % 20 == 0:
            self._liveness(t)
        if not self.dead and self.health.fd_base is not None:
            # fds are cheap to count: check after every connection, so that a
            # leak is pinned on the connection (transcript) that caused it
            n = self.health.fds_settled(self.health.fd_base, settle=1.0)
            if n is not None and n > self.health.fd_base:
                self._health(t)
        if self.report.connections % 50 == 0 and not self.dead:
            self._health(t)
        return sent

    def _save(self, failure: Failure, t: Transcript) -> None:
        """Minimize (time-boxed: the run's deadline, at most ``shrink_s``) and save in its
        bucket."""
        from .common import bucket

        # (signal buckets without their request: it is only known once minimized)
        family = bucket(failure.kind, failure.message)
        final = t
        if self.shrink and family not in self.minimized and len(transcript_units(t)) > 2:
            self.minimized.add(family)
            end = time.monotonic() + self.shrink_s
            if self.deadline is not None:
                end = min(end, max(self.deadline, time.monotonic() + 5))
            final, tries = minimize_transcript(
                self.target, t, failure, deadline=end, timeout=self.timeout
            )
            self.report.details["minimize_replays"] = (
                self.report.details.get("minimize_replays", 0) + tries
            )
            self.target.problems()  # what the minimizing replays logged is not a new finding
            if "(last request " in failure.message:
                head = failure.message.rsplit(" (last request ", 1)[0]
                failure = Failure(failure.kind, f"{head} (last request {last_request(final)})")
        save_failure(
            self.report,
            "frames",
            failure,
            final,
            crash_dir=self.crash_dir,
            extra={"original_frames": t.frames_sent()} if final is not t else None,
        )

    def _health(self, t: Transcript) -> None:
        """fd/RSS growth since the baseline is a leak (reported once, then re-baselined)."""
        problems = self.health.check()
        for p in problems:
            kind, msg = split_problem(p)
            if not self.known.match(self.report, msg):
                save_failure(self.report, "frames", Failure(kind, msg), t, crash_dir=self.crash_dir)
        if problems:
            self.health.baseline()

    def _liveness(self, prev: Transcript) -> None:
        t = Transcript()
        try:
            liveness(self.target, timeout=self.timeout, transcript=t)
        except Failure as f:
            # the connection before broke the server: save both
            both = Transcript()
            both.records = prev.records + t.records
            save_failure(self.report, "frames", f, both, crash_dir=self.crash_dir)
            self.dead = True
        self.report.connections += 1

    def run(self, *, time_budget: float | None, max_frames: int | None) -> Report:
        start = time.monotonic()
        deadline = run_deadline(start, time_budget, max_frames)
        self.deadline = deadline
        try:
            liveness(self.target, timeout=self.timeout, exercise=True)  # warm-up
        except Failure as f:
            save_failure(self.report, "frames", f, Transcript(), crash_dir=self.crash_dir)
            self.dead = True
        if self.dead:
            self.report.notes.append("server failed the first liveness check; nothing fuzzed")
            return self.report
        self.health.baseline()
        while not STOP.is_set():
            if self.dead:
                # unattended: restart the dead or wedged server and keep going
                self.report.details["restarts"] = self.report.details.get("restarts", 0) + 1
                self.target.restart()
                try:
                    liveness(self.target, timeout=self.timeout, exercise=True)
                except Failure as f:
                    self.report.add_failure(f.kind, "after a restart: " + f.message)
                    break
                self.target.problems()
                self.health = Health(self.target, self.report)
                self.health.baseline()
                self.dead = False
            if deadline is not None and time.monotonic() >= deadline:
                break
            if max_frames is not None and self.mutated >= max_frames:
                break
            budget = max_frames - self.mutated if max_frames is not None else 64
            self.mutated += self.connection(budget)
            self.report.examples_run = self.mutated
            if not self.target.per_connection_process:
                try:
                    self.target.reset_export()
                except OSError:
                    pass
        if self.dead:
            self.report.notes.append("the server stopped answering and did not come back")
        else:
            for p in self.health.check(final=True):
                kind, msg = split_problem(p)
                if not self.known.match(self.report, msg):
                    self.report.add_failure(kind, msg)
        self.report.details["mutated_frames"] = self.mutated
        self.report.details["mutations"] = dict(sorted(self.kinds.items()))
        self.report.details["type_sweep_done"] = not self.sweep
        self.report.details["flag_sweep_done"] = not self.flags
        self.report.duration_s = round(time.monotonic() - start, 2)
        return self.report


def run(
    target: Target,
    report: Report,
    *,
    seed: int,
    time_budget: float | None,
    max_frames: int | None,
    crash_dir: Path | None,
    timeout: float = 5.0,
    known: Known | None = None,
    shrink: bool = True,
    shrink_s: float = 60.0,
) -> Report:
    """Run the frame fuzzer until the time or frame budget is spent.

    ``shrink_s``: the most one finding's minimization may take (less if the run's time
    budget ends first); a test that needs the smallest reproducer gives it the time to
    converge on a loaded machine."""
    return FrameFuzzer(
        target,
        report,
        seed=seed,
        crash_dir=crash_dir,
        timeout=timeout,
        known=known,
        shrink=shrink,
        shrink_s=shrink_s,
    ).run(time_budget=time_budget, max_frames=max_frames)
