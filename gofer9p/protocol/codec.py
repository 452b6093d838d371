"""Sans-IO 9P2000.L codec: bytes in, message objects out, and back.

Nothing here touches a socket or a file.  ``decode`` takes one whole frame
(``framing.next_frame`` finds them in a byte stream), ``encode`` builds one frame.

Each message class declares its wire layout in ``FIELDS``; ``_codegen.py``
turns the layouts into one specialised encoder and decoder per message, kept
as the generated module ``_generated.py``.  Consecutive fixed-size
fields are read or written with a single precompiled ``struct.Struct`` call,
which is what makes the codec cheap enough for the server's hot path (a
generic field-by-field interpreter costs several times more per message).

A short or inconsistent frame raises ``ProtocolError`` naming the message and
the field that did not fit; bytes left over after the last field are an error
too, because a well-formed client never sends them and silently ignoring them
would hide framing bugs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

from . import _generated  # specialised per-message code, see _codegen.py
from . import constants as C
from ._wire import _QID, HEADER
from ._wire import ProtocolError as ProtocolError
from .messages import Message, Qid

Buffer = bytes | bytearray | memoryview

_DIRENT: Final = struct.Struct("<BIQQBH")
DIRENT_FIXED: Final = _DIRENT.size  # 24 bytes before the name


class Dirent(NamedTuple):
    """One Rreaddir entry."""

    qid: Qid
    offset: int
    type: int
    name: bytes


DECODERS: dict[int, Callable[[Any, int], Message]] = _generated.DECODERS
ENCODERS: dict[type, Callable[[Any], bytes]] = _generated.ENCODERS

RGETATTR: struct.Struct = _generated._E_Rgetattr
"""The whole Rgetattr frame as one fixed layout: size (160), type, tag, valid,
qid type/version/path, then the attribute fields in wire order.  The server's
Tgetattr fast path packs it directly from a stat (no message objects)."""
TGETATTR_BODY: Final = struct.Struct("<IQ")
"""Tgetattr's body (fid, request_mask); a frame of any other size is malformed."""

# Fixed layouts of the commonest requests and replies, unpacked and packed
# whole (one struct call, no message objects): the dispatch table's entries
# for Tgetattr, Tclunk, Tremove, Twalk (a clone, one name), Tlcreate, Tlopen,
# Tread, Treaddir and Twrite use them.
FID_BODY: Final = struct.Struct("<I")
"""Tclunk's and Tremove's body: the fid."""
TLOPEN_BODY: Final = struct.Struct("<II")
"""Tlopen's body: fid, flags (read in place by its entry and the read-only policy)."""
TWALK_HEAD: Final = struct.Struct("<IIH")
"""Twalk's fixed part (fid, newfid, nwname); with nwname 0 the whole body (a clone)."""
RWALK_EMPTY: Final = struct.Struct("<IBHH")
"""The whole Rwalk of a clone: header and nwqid 0."""
NAME_LEN: Final = struct.Struct("<H")
"""A string's length prefix: Twalk's one name starts after TWALK_HEAD with it."""
RWALK_ONE: Final = struct.Struct("<IBHHBIQ")
"""The whole Rwalk of a one-name walk: header (size 22), nwqid 1, the qid."""
TLCREATE_HEAD: Final = struct.Struct("<IH")
"""Tlcreate's fid and its name's length; the name follows, then TLCREATE_TAIL."""
TLCREATE_TAIL: Final = struct.Struct("<III")
"""Tlcreate's flags, mode and gid, after the name."""
RLCREATE: struct.Struct = _generated._E_Rlcreate
"""The whole Rlcreate frame: size (24), type, tag, qid type/version/path, iounit."""
RLOPEN: struct.Struct = _generated._E_Rlopen
"""The whole Rlopen frame: size (24), type, tag, qid type/version/path, iounit."""
TIO_HEAD: Final = struct.Struct("<IQI")
"""Tread's and Treaddir's body and Twrite's head: fid, offset, count."""
HEADER_U32: Final = struct.Struct("<IBHI")
"""A header and one u32: Rread's and Rreaddir's count (the data follows), Rwrite's count,
Rlerror's ecode."""


def decode_body(mtype: int, tag: int, body: Buffer) -> Message:
    """Decode the body of a frame whose header was already parsed.

    Unknown types raise ``ProtocolError(..., "type")``; the server answers them
    with Rlerror because the frame boundary is still known.
    """
    dec = DECODERS.get(mtype)
    if dec is None:
        raise ProtocolError(f"type{mtype}", "type", f"unknown message type {mtype}")
    return dec(body, tag)


def decode(frame: Buffer) -> Message:
    """Decode one whole frame (size field included)."""
    if len(frame) < C.HEADER_SIZE:
        raise ProtocolError("frame", "size", f"{len(frame)} bytes, shorter than the 7-byte header")
    size, mtype, tag = HEADER.unpack_from(frame, 0)
    if size != len(frame):
        raise ProtocolError("frame", "size", f"size field {size} but frame is {len(frame)} bytes")
    return decode_body(mtype, tag, memoryview(frame)[C.HEADER_SIZE :])


def encode(msg: Message) -> bytes:
    """Encode one message as a whole frame."""
    return ENCODERS[type(msg)](msg)


def encode_qid(q: Qid) -> bytes:
    return _QID.pack(q.type, q.version, q.path)


def encode_dirent(qid: Qid, offset: int, dtype: int, name: bytes) -> bytes:
    """One Rreaddir entry: ``qid[13] offset[8] type[1] name[s]``."""
    return _DIRENT.pack(qid.type, qid.version, qid.path, offset, dtype, len(name)) + name


def iter_dirents(data: Buffer) -> Iterator[Dirent]:
    """Entries of an Rreaddir payload; raises ProtocolError on a truncated entry."""
    off = 0
    n = len(data)
    while off < n:
        if off + DIRENT_FIXED > n:
            raise ProtocolError("Rreaddir", "data", "truncated entry")
        qt, qv, qp, offset, dtype, ln = _DIRENT.unpack_from(data, off)
        off += DIRENT_FIXED
        if off + ln > n:
            raise ProtocolError("Rreaddir", "name", "entry name longer than data")
        yield Dirent(Qid(qt, qv, qp), offset, dtype, bytes(data[off : off + ln]))
        off += ln


def decode_dirents(data: Buffer) -> list[Dirent]:
    return list(iter_dirents(data))
