"""One 9P2000.L connection as a state machine with no I/O: bytes in, replies and actions out.

The trio layer (``gofer9p.server``) owns the socket, the buffers' lifetimes and the
tasks; this module decides everything else.  It is driven like h11's
``Connection``::

    core = ConnectionCore(session, limits, name)
    act = core.receive(view, start, end)   # handle the complete frames in view[start:end]
    # core.out: reply buffers to send, in order; core.start: the first byte not consumed
    # act: DRAINED (receive more), SEND (send core.out, then call receive again),
    # or an Action the I/O layer carries out (below), then calls receive again.

States (:class:`State`): ``AWAITING_VERSION`` (only Tversion is answered, anything
else is ``EPROTO``, frames are at most ``PRE_VERSION_FRAME`` bytes), ``SERVING``,
``RESETTING`` (a Tversion waits for the background requests to end and the fids
to be clunked: :meth:`ConnectionCore.version_done` ends it) and ``CLOSED`` (a
framing error, or the I/O layer's :meth:`ConnectionCore.close`: late replies are
dropped).

Actions (each tells the I/O layer one thing it must do with I/O or time; the
replies queued before it are in ``out`` and go first):

* :class:`Background`: run a request in a worker thread (:meth:`ConnectionCore.run_blocking`),
  after admitting it (:meth:`ConnectionCore.admit`); its reply is sent when done.
* :class:`Splice`: an Rread header whose ``n`` data bytes wait in the splice pipe.
* :class:`FlushWait`: a Tflush of a request in flight; it waits for an in-flight
  slot, then :meth:`ConnectionCore.join_flush`, and is answered after that request.
* :class:`Versioned`: a Tversion: reset the session (cancel and await background
  requests, clunk every fid) if ``reset``, open the splice pipe if ``open_pipe``,
  then :meth:`ConnectionCore.version_done`.
* :class:`Close`: a framing error: send ``out`` and close.

Every request goes through one dispatch table (:meth:`ConnectionCore._build_table`):
message type -> one entry that decodes, applies the policy of
``protocol.policy`` (a read-only point refuses mutating requests before any
handler runs), calls the session and encodes.  The guards (state, duplicate tag)
are checked once per frame, in :meth:`ConnectionCore.receive` (what fails them
goes to :meth:`ConnectionCore.handle`).  The commonest requests (Tgetattr,
Tclunk, Tremove, a Twalk clone or of one name, Tlcreate, a Tlopen that does not
truncate, Tread, Treaddir, a Twrite to a regular file) have entries that unpack and pack
the codec's fixed layouts with no message objects; the other cases of Twalk,
Tlcreate, Tlopen and Twrite (and every malformed frame of theirs) fall through
to the general decoder inside the same entry, so one path answers each message.
"""

from __future__ import annotations

import enum
import errno
import logging
from collections.abc import Callable
from typing import Any, Final, NoReturn

import attrs
from mypy_extensions import mypyc_attr

from .attach import AttachPoint, Session
from .protocol import constants as C
from .protocol._wire import HEADER
from .protocol.codec import (
    DECODERS,
    ENCODERS,
    FID_BODY,
    HEADER_U32,
    NAME_LEN,
    RLCREATE,
    RLOPEN,
    RWALK_EMPTY,
    RWALK_ONE,
    TGETATTR_BODY,
    TIO_HEAD,
    TLCREATE_HEAD,
    TLCREATE_TAIL,
    TLOPEN_BODY,
    TWALK_HEAD,
    ProtocolError,
)
from .protocol.framing import FRAMING_ERROR, next_frame
from .protocol.messages import Message, Rflush, Rversion, Rwalk, Tread
from .protocol.policy import ORDERED, POLICY, WRITE_FLAGS
from .stats import COLUMNS, ConnStats

log = logging.getLogger("gofer9p.server")

T: Final = C.MsgType
_T_VERSION: Final = int(T.TVERSION)
_T_FLUSH: Final = int(T.TFLUSH)
_T_READ: Final = int(T.TREAD)
_T_WRITE: Final = int(T.TWRITE)
_R_CLUNK: Final = int(T.RCLUNK)
_R_REMOVE: Final = int(T.RREMOVE)
_R_WALK: Final = int(T.RWALK)
_R_LCREATE: Final = int(T.RLCREATE)
_R_LOPEN: Final = int(T.RLOPEN)
_R_READDIR: Final = int(T.RREADDIR)
_L_O_TRUNC: Final = C.L_O_TRUNC
_R_WRITE: Final = int(T.RWRITE)
_R_READ: Final = int(T.RREAD)

PRE_VERSION_FRAME: Final = 8 * 1024
"""Largest frame accepted before a Tversion is granted: any Tversion fits
(its version string is a few bytes), and an unversioned peer cannot make the
receive buffer grow past this (a larger header closes the connection)."""
MIN_MSIZE: Final = 4096
"""Smaller msizes leave no room for a useful readdir or walk reply."""

BIG_READ: Final = 64 * 1024
"""Read replies at least this large use pooled buffers (no zero-fill, no mmap)."""
SPLICE_MIN: Final = 32 * 1024
"""Smallest Tread count whose data is spliced (page references) instead of copied."""


class State(enum.Enum):
    """Where a connection is in its life (see the module docstring)."""

    AWAITING_VERSION = "awaiting Tversion"
    SERVING = "serving"
    RESETTING = "resetting"
    CLOSED = "closed"


_SERVING: Final = State.SERVING
_CLOSED: Final = State.CLOSED
_NO_ENTRIES: dict[int, Callable[[int, memoryview], Any]] = {}
"""The table outside SERVING: every frame goes to ``handle``."""


class Action:
    """Something the I/O layer must do before it calls ``receive`` again."""

    __slots__ = ()


class _Signal(Action):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DRAINED: Action = _Signal("DRAINED")
"""Every complete frame was handled (``out`` holds their replies): receive more bytes."""
SEND: Action = _Signal("SEND")
"""``out`` must be sent before more frames are handled (flush_bytes reached, or
an ordered request behind a held-back large reply)."""


# The actions are plain classes with __slots__ (not attrs classes): mypyc compiles
# this module (setup.py), and compiled attrs classes may not derive from Action.


class Background(Action):
    """Run ``msg`` in a worker thread (``handler`` None: a Tread).

    ``payload`` (Twrite data) and ``reply`` (a Tread's reply buffer) are its
    bytes in the connection's byte budget."""

    __slots__ = ("handler", "msg", "payload", "reply")

    def __init__(
        self, msg: Any, handler: Callable[[Any], Message] | None, payload: int, reply: int
    ) -> None:
        self.msg = msg
        self.handler = handler
        self.payload = payload
        self.reply = reply


class Splice(Action):
    """Send ``header``, then the ``n`` bytes waiting in the splice pipe, with nothing between."""

    __slots__ = ("header", "n")

    def __init__(self, header: bytes, n: int) -> None:
        self.header = header
        self.n = n


class FlushWait(Action):
    """The Tflush ``tag`` of the in-flight ``oldtag``: take an in-flight slot, then
    :meth:`ConnectionCore.join_flush`."""

    __slots__ = ("oldtag", "tag")

    def __init__(self, tag: int, oldtag: int) -> None:
        self.tag = tag
        self.oldtag = oldtag


class Versioned(Action):
    """A Tversion's reply, sent by :meth:`ConnectionCore.version_done` after the reset."""

    __slots__ = ("open_pipe", "reply", "reset")

    def __init__(self, reply: bytes, reset: bool, open_pipe: bool) -> None:
        self.reply = reply
        self.reset = reset
        self.open_pipe = open_pipe


class Close(Action):
    """A frame size outside ``[7, max_frame]``: the stream cannot be trusted any more."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class InFlight:
    """A background request: the tags of the Tflushes waiting for it (answered in
    order once its reply was sent or dropped; each is in ``inflight`` under its
    own tag until answered)."""

    __slots__ = ("answered", "flushes", "tag")

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.flushes: list[int] = []
        self.answered = False  # its flushes were answered: a later one is answered at once


@attrs.frozen
class Limits:
    """The per-connection limits the core applies (from ``server.ServerConfig``)."""

    max_msize: int
    flush_bytes: int
    inflight_msizes: int
    splice_max: int
    """Largest spliced Tread count (0: splicing off)."""


def rlerror(tag: int, err: int) -> bytes:
    """An Rlerror frame."""
    return HEADER_U32.pack(11, T.RLERROR, tag, err)


def _blocking_read(tag: int, fid: int, offset: int, count: int) -> Background:
    """A Tread to run in a worker thread (a FIFO's), its whole reply in the byte budget."""
    return Background(Tread(tag=tag, fid=fid, offset=offset, count=count), None, 0, 11 + count)


def _rflush(tag: int) -> bytes:
    return ENCODERS[Rflush](Rflush(tag=tag))


@mypyc_attr(allow_interpreted_subclasses=True)  # (testing/plant.py's leak derives from it)
class ConnectionCore:
    """The sans-IO state of one connection (see the module docstring)."""

    def __init__(
        self, session: Session, limits: Limits, name: str, stats: ConnStats | None = None
    ) -> None:
        self.session = session
        # the session's own point: the policy applied here is the one of the files it serves
        self.point: AttachPoint = session.point
        self.limits = limits
        self.name = name
        self.state = State.AWAITING_VERSION
        self.msize = 0
        self.max_frame = PRE_VERSION_FRAME
        self.budget = 0
        """Byte budget of background requests (inflight_msizes x msize, set by Tversion)."""
        self.inflight: dict[int, InFlight] = {}
        self.frames = 0
        self.out: list[Any] = []
        """Replies to send, in order; the I/O layer takes them (:meth:`take`) after
        every call of :meth:`receive`, before it carries out an action."""
        self.flush_bytes = limits.flush_bytes
        self.start = 0
        self.need = 0
        """Size the partial frame at ``start`` announces (0: not known yet)."""
        self.pool: list[bytearray] = []
        """Free max-msize read buffers (at most one kept)."""
        self.lent: list[bytearray] = []
        """Pooled buffers in replies not yet sent."""
        self._pool_min = max(BIG_READ, limits.flush_bytes)
        self.pipe_w = -1
        """Write end of the splice pipe (the I/O layer opens it); -1: none."""
        self.splice_max = limits.splice_max
        self.table = self._build_table()
        self.stats = stats if stats is not None else ConnStats(name, self.gauges)
        """This connection's counters (gofer9p.stats): the core adds the bytes of each
        frame and reply and each error; the I/O layer the latencies once it sent the
        replies (``ConnStats.replied``)."""
        self.rx = self.stats.rx
        self.tx = self.stats.tx

    # ------------------------------------------------------------ the input
    def receive(self, mv: memoryview, start: int, end: int) -> Action:
        """Handle complete frames of ``mv[start:end]`` until the I/O layer is needed.

        Replies go to ``out`` (at most ``flush_bytes`` of them, and one large
        Rread held back to the end so that the small replies behind it
        overtake it: a Tgetattr pipelined behind a 4 MiB Tread waits for the
        read's one preadv, not for 4 MiB to cross the socket).  ``start`` is
        left at the first byte not consumed.

        The guards are checked here, once per frame: a type with an entry in
        the table (only while serving) and a tag not in flight go straight to
        the entry; anything else to :meth:`handle`.  Nothing that changes the
        state, the table or ``max_frame`` happens inside this call (Tversion
        is an action), so they are read once."""
        flush_bytes = self.flush_bytes
        max_frame = self.max_frame
        table = self.table if self.state is _SERVING else _NO_ENTRIES
        inflight = self.inflight
        out = self.out
        queued = 0  # the I/O layer took (and sent) out before this call
        frames = self.frames
        rx = self.rx
        tx = self.tx
        held: Any = None
        try:
            while True:
                if start == end:  # nothing left (a client waiting for its reply)
                    self.need = 0
                    return DRAINED
                size, mtype, tag = next_frame(mv, start, end, max_frame)
                if mtype < 0:
                    if mtype == FRAMING_ERROR:
                        return self._framing_error(size)
                    self.need = size
                    return DRAINED
                if held is not None and mtype in ORDERED:
                    return SEND
                frames += 1
                frame = mv[start : start + size]
                start += size
                entry = table.get(mtype)
                if entry is None or tag in inflight:
                    r = self.handle(mtype, tag, frame)
                    if mtype >= COLUMNS:
                        mtype = 0
                else:
                    try:
                        r = entry(tag, frame)
                    except Exception as e:
                        r = self._failed(tag, mtype, e)
                rx[mtype] += size
                if isinstance(r, Action):
                    return r
                n = len(r)
                tx[mtype] += n
                if n >= flush_bytes and held is None:
                    held = r
                    continue
                out.append(r)
                queued += n
                if queued >= flush_bytes:
                    return SEND
        finally:
            self.start = start
            self.frames = frames
            if held is not None:
                out.append(held)

    def take(self) -> list[Any]:
        """The replies queued so far (``out`` starts anew)."""
        out = self.out
        self.out = []
        return out

    def _framing_error(self, size: int) -> Close:
        log.warning(
            "%s: framing error: frame size %d outside [7, %d]; closing",
            self.name,
            size,
            self.max_frame,
        )
        self.state = _CLOSED
        return Close(size)

    def close(self) -> None:
        """The connection is ending: replies still to come are dropped."""
        self.state = _CLOSED

    # --------------------------------------------------------------- guards
    def handle(self, mtype: int, tag: int, frame: memoryview) -> Any:
        """A frame that :meth:`receive` does not hand to a table entry: a
        Tversion, an unknown type, a request before Tversion, a duplicate tag."""
        try:
            if mtype == _T_VERSION:
                return self._version(DECODERS[mtype](frame[7:], tag))
        except Exception as e:
            return self._failed(tag, mtype, e)
        if mtype not in self.table:
            log.warning("%s: tag=%d unsupported message type %d", self.name, tag, mtype)
            return self._error(tag, mtype, errno.EOPNOTSUPP)
        if self.state is not _SERVING:
            log.warning("%s: tag=%d type %d before Tversion", self.name, tag, mtype)
            return self._error(tag, mtype, errno.EPROTO)
        log.warning("%s: tag=%d already in flight (duplicate tag)", self.name, tag)
        return self._error(tag, mtype, errno.EINVAL)

    def _failed(self, tag: int, mtype: int, e: Exception) -> bytes:
        """The Rlerror of a request whose entry raised ``e``: a host error's errno,
        EINVAL for a malformed frame, EIO (and a logged traceback) for a bug."""
        if isinstance(e, OSError):
            return self._error(tag, mtype, e.errno or errno.EIO)
        if isinstance(e, ProtocolError):
            log.warning("%s: tag=%d malformed frame: %s", self.name, tag, e)
            return self._error(tag, mtype, errno.EINVAL)
        log.error("%s: tag=%d internal error handling type %d", self.name, tag, mtype, exc_info=e)
        return self._error(tag, mtype, errno.EIO)

    def _error(self, tag: int, mtype: int, err: int) -> bytes:
        """The Rlerror ``err`` of a ``mtype`` request, counted (queued by
        :meth:`receive`, so its type goes to ``errk`` too: see ``ConnStats.replied``)."""
        stats = self.stats
        stats.error(mtype, err)
        stats.errk.append(mtype if mtype < COLUMNS else 0)
        return rlerror(tag, err)

    def gauges(self) -> tuple[int, int, int]:
        """Fids, requests in flight (background ones and the Tflushes waiting for
        them) and host fds charged to the session, for a statistics snapshot."""
        s = self.session
        return s.fid_count(), len(self.inflight), s.fds_charged()

    # ------------------------------------------------------- dispatch table
    def _build_table(self) -> dict[int, Callable[[int, memoryview], Any]]:
        """Message type -> entry(tag, frame) -> reply buffer or Action.

        Built per connection from ``protocol.policy.POLICY`` (which types exist,
        which mutate or may block), the codec's decoders and encoders (read at
        connection start) and the session's handlers."""
        s = self.session
        table: dict[int, Callable[[int, memoryview], Any]] = {}
        for t, policy in POLICY.items():
            handler = s.handlers.get(t)
            dec = DECODERS.get(t)
            if handler is None or dec is None:
                continue
            if policy.may_block:
                table[t] = self._threadable(dec, handler)
            else:
                table[t] = self._general(dec, handler)
        # the fixed-layout entries (Twalk and Twrite fall back to the general
        # decoder for their other cases; the rest have one valid frame size)
        table[T.TGETATTR] = self._getattr
        table[T.TCLUNK] = self._clunk
        table[T.TREMOVE] = self._remove
        table[T.TWALK] = self._walk_entry(DECODERS[T.TWALK], s.handlers[T.TWALK])
        table[T.TLCREATE] = self._lcreate_entry(DECODERS[T.TLCREATE], s.handlers[T.TLCREATE])
        table[T.TLOPEN] = self._lopen_entry(DECODERS[T.TLOPEN], s.handlers[T.TLOPEN])
        table[T.TWRITE] = self._write_entry(DECODERS[T.TWRITE], s.handlers[T.TWRITE])
        table[T.TREAD] = self._read
        table[T.TREADDIR] = self._readdir
        table[T.TFLUSH] = self._flush_entry(DECODERS[T.TFLUSH])
        if self.point.readonly:
            for t, policy in POLICY.items():
                if policy.mutates and t in table:
                    table[t] = self._refuse(t, table[t])
        return table

    @staticmethod
    def _general(
        dec: Callable[[Any, int], Message], handler: Callable[[Any], Message]
    ) -> Callable[[int, memoryview], Any]:
        def entry(tag: int, frame: memoryview) -> bytes:
            reply = handler(dec(frame[7:], tag))
            return ENCODERS[type(reply)](reply)

        return entry

    def _threadable(
        self, dec: Callable[[Any, int], Message], handler: Callable[[Any], Message]
    ) -> Callable[[int, memoryview], Any]:
        is_blocking = self.session.is_blocking

        def entry(tag: int, frame: memoryview) -> Any:
            msg = dec(frame[7:], tag)
            if is_blocking(msg):
                return Background(msg, handler, 0, 0)
            reply = handler(msg)
            return ENCODERS[type(reply)](reply)

        return entry

    def _refuse(
        self, mtype: int, entry: Callable[[int, memoryview], Any]
    ) -> Callable[[int, memoryview], Any]:
        """The read-only policy, applied once for every mutating request: EROFS,
        or a panic with ``panic_on_write``.  A Tlopen is refused only with a
        write or truncate flag; a Tremove still clunks its fid, as every Tremove does."""
        point = self.point
        name = T(mtype).name
        session = self.session

        def deny() -> NoReturn:
            if point.panic_on_write:
                point.panic(f"mutating request {name} on read-only attach point {point.path!r}")
            raise OSError(errno.EROFS, "read-only attach point")

        if mtype == T.TLOPEN:

            def lopen(tag: int, frame: memoryview) -> Any:
                # the flags read in place, the frame decoded once (by the entry;
                # a frame of another size is malformed there)
                if len(frame) == 15 and TLOPEN_BODY.unpack_from(frame, 7)[1] & WRITE_FLAGS:
                    deny()
                return entry(tag, frame)

            return lopen
        if mtype == T.TREMOVE:

            def remove(tag: int, frame: memoryview) -> Any:
                if len(frame) != 11:
                    raise ProtocolError("Tremove", "size", f"frame of {len(frame)} bytes")
                session.clunk_fid(FID_BODY.unpack_from(frame, 7)[0])
                deny()

            return remove

        def refused(tag: int, frame: memoryview) -> Any:
            deny()

        return refused

    # The fixed-layout entries: a frame of the one valid size is unpacked and
    # its reply packed whole; any other size is malformed (EINVAL), as the
    # general decoder would say.
    def _getattr(self, tag: int, frame: memoryview) -> bytes:
        if len(frame) != 19:
            raise ProtocolError("Tgetattr", "size", f"frame of {len(frame)} bytes, expected 19")
        fid, mask = TGETATTR_BODY.unpack_from(frame, 7)
        return self.session.getattr_frame(tag, fid, mask)

    def _clunk(self, tag: int, frame: memoryview) -> bytes:
        if len(frame) != 11:
            raise ProtocolError("Tclunk", "size", f"frame of {len(frame)} bytes, expected 11")
        self.session.clunk_fid(FID_BODY.unpack_from(frame, 7)[0])
        return HEADER.pack(7, _R_CLUNK, tag)

    def _readdir(self, tag: int, frame: memoryview) -> bytes:
        if len(frame) != 23:
            raise ProtocolError("Treaddir", "size", f"frame of {len(frame)} bytes, expected 23")
        fid, offset, count = TIO_HEAD.unpack_from(frame, 7)
        data = self.session.read_dir(fid, offset, count)
        n = len(data)
        return HEADER_U32.pack(11 + n, _R_READDIR, tag, n) + data

    def _remove(self, tag: int, frame: memoryview) -> bytes:
        if len(frame) != 11:
            raise ProtocolError("Tremove", "size", f"frame of {len(frame)} bytes, expected 11")
        self.session.remove_fid(FID_BODY.unpack_from(frame, 7)[0])
        return HEADER.pack(7, _R_REMOVE, tag)

    def _walk_entry(
        self, dec: Callable[[Any, int], Message], walk: Callable[[Any], Message]
    ) -> Callable[[int, memoryview], Any]:
        clone_fid = self.session.clone_fid
        walk_fid = self.session.walk_fid

        def entry(tag: int, frame: memoryview) -> Any:
            n = len(frame)
            if n == 17:
                fid, newfid, nwname = TWALK_HEAD.unpack_from(frame, 7)
                if nwname == 0 and newfid != fid:  # a clone: the whole reply is fixed
                    clone_fid(fid, newfid)
                    return RWALK_EMPTY.pack(9, _R_WALK, tag, 0)
            elif n > 19:
                fid, newfid, nwname = TWALK_HEAD.unpack_from(frame, 7)
                # one name (a lookup: the Linux client's commonest named walk) that
                # fills the frame exactly; anything else goes to the decoder below
                if nwname == 1 and NAME_LEN.unpack_from(frame, 17)[0] == n - 19:
                    qids = walk_fid(fid, newfid, [bytes(frame[19:])])
                    if len(qids) == 1:
                        q = qids[0]
                        return RWALK_ONE.pack(22, _R_WALK, tag, 1, q.type, q.version, q.path)
                    return ENCODERS[Rwalk](Rwalk(tag, qids))
            reply = walk(dec(frame[7:], tag))
            return ENCODERS[type(reply)](reply)

        return entry

    def _lcreate_entry(
        self, dec: Callable[[Any, int], Message], lcreate: Callable[[Any], Message]
    ) -> Callable[[int, memoryview], Any]:
        """Tlcreate: a frame whose name fills it exactly is unpacked in place, its
        Rlcreate packed whole (the qid of a new file, iounit 0)."""
        create_file = self.session.create_file

        def entry(tag: int, frame: memoryview) -> Any:
            n = len(frame)
            if n >= 25:
                fid, ln = TLCREATE_HEAD.unpack_from(frame, 7)
                if ln == n - 25:
                    flags, mode, gid = TLCREATE_TAIL.unpack_from(frame, 13 + ln)
                    q = create_file(fid, bytes(frame[13 : 13 + ln]), flags, mode, gid)
                    return RLCREATE.pack(24, _R_LCREATE, tag, q.type, q.version, q.path, 0)
            reply = lcreate(dec(frame[7:], tag))
            return ENCODERS[type(reply)](reply)

        return entry

    def _lopen_entry(
        self, dec: Callable[[Any, int], Message], lopen: Callable[[Any], Message]
    ) -> Callable[[int, memoryview], Any]:
        """Tlopen: a frame of its one valid size without O_TRUNC opens inline, its
        Rlopen packed whole (the qid, iounit 0); a truncating open (a worker
        thread's, see ``session.is_blocking``) and a malformed frame go the
        threadable way."""
        open_fid = self.session.open_fid
        general = self._threadable(dec, lopen)

        def entry(tag: int, frame: memoryview) -> Any:
            if len(frame) == 15:
                fid, flags = TLOPEN_BODY.unpack_from(frame, 7)
                if not flags & _L_O_TRUNC:
                    q = open_fid(fid, flags)
                    return RLOPEN.pack(24, _R_LOPEN, tag, q.type, q.version, q.path, 0)
            return general(tag, frame)

        return entry

    def _write_entry(
        self, dec: Callable[[Any, int], Message], write: Callable[[Any], Message]
    ) -> Callable[[int, memoryview], Any]:
        session = self.session
        write_regular = session.write_regular

        def entry(tag: int, frame: memoryview) -> Any:
            n = len(frame)
            if n >= 23:
                # a write to an open regular file: pwrite straight from the receive buffer
                fid, offset, count = TIO_HEAD.unpack_from(frame, 7)
                if count == n - 23:
                    written = write_regular(fid, offset, frame[23:])
                    if written >= 0:
                        return HEADER_U32.pack(11, _R_WRITE, tag, written)
            msg: Any = dec(frame[7:], tag)
            if session.read_blocks(msg.fid):  # a FIFO or device: a worker thread
                return Background(msg, write, len(msg.data), 0)
            reply = write(msg)
            return ENCODERS[type(reply)](reply)

        return entry

    # ----------------------------------------------------------------- Tread
    def _read(self, tag: int, frame: memoryview) -> Any:
        if len(frame) != 23:
            raise ProtocolError("Tread", "size", f"frame of {len(frame)} bytes, expected 23")
        fid, offset, count = TIO_HEAD.unpack_from(frame, 7)
        limit = self.msize - C.IOHDRSZ
        if count > limit:
            count = limit
        session = self.session
        # A FIFO's read goes to a worker thread (_blocking_read): a small one is answered
        # BLOCKS by the inline read itself (fill_rread: None; no call of its own for the
        # common Tread), a large one is asked first, before a buffer is taken.  (Splicing
        # refuses a FIFO.)
        if self.pipe_w >= 0 and SPLICE_MIN <= count <= self.splice_max:
            n = session.splice_read(fid, offset, count, self.pipe_w)
            if n > 0:
                return Splice(HEADER_U32.pack(11 + n, _R_READ, tag, n), n)
            if n == 0:
                return HEADER_U32.pack(11, _R_READ, tag, 0)
        if count < BIG_READ:
            # at most 64 KiB, freed at once if the read fails
            r = self.fill_rread(bytearray(11 + count), tag, fid, offset, count, False, True)
            return r if r is not None else _blocking_read(tag, fid, offset, count)
        if session.read_blocks(fid):
            return _blocking_read(tag, fid, offset, count)
        # Memory only for work that can succeed: the fid is checked and the
        # count clamped to what the file can give before any buffer is taken.
        count = session.read_size(fid, offset, count)
        if count < self._pool_min:
            return self.fill_rread(bytearray(11 + count), tag, fid, offset, count)
        # A reply this large is held back and sent before the next Tread
        # (receive), so one pooled buffer is lent at a time.
        pool = self.pool
        rb = pool.pop() if pool else bytearray(11 + self.msize)
        try:
            r = self.fill_rread(rb, tag, fid, offset, count, True)
        except BaseException:
            pool.append(rb)
            raise
        if len(r) - 11 < self._pool_min:
            # a short read (the file shrank meanwhile): the reply is not held
            # back, so it must not keep the pooled buffer
            pool.append(rb)
            return bytes(r)
        self.lent.append(rb)
        return r

    def fill_rread(
        self, rb: bytearray, tag: int, fid: int, offset: int, count: int, pooled: bool = False,
        inline: bool = False,
    ) -> Any:
        """Read into ``rb`` after its 11-byte header; the Rread frame.

        After a short read the unused tail is given back (``rb`` is cut to the
        reply), so that a queued reply holds no more memory than it sends; a
        ``pooled`` buffer is kept whole and a view of it returned.  ``inline``
        (on the event loop): None, nothing read, for a fid whose reads belong in a
        worker thread (a FIFO: the backend's ``BLOCKS``)."""
        mv = memoryview(rb)
        n = self.session.read_into(fid, offset, mv[11 : 11 + count], -1, 0, inline)
        if n < 0:  # BLOCKS (only inline: a read into a buffer otherwise returns n >= 0)
            mv.release()
            return None
        HEADER_U32.pack_into(rb, 0, 11 + n, _R_READ, tag, n)
        if n != len(rb) - 11:
            if pooled:
                return mv[: 11 + n]
            mv.release()
            del rb[11 + n :]
        return rb

    def returned(self) -> None:
        """The replies taken were written: lent pooled buffers come back.

        One spare buffer: a reply is written out (flush_bytes) before the next
        large read is handled, so one is all the loop reuses, and a second
        max-msize buffer would be 4 MiB of VmHWM for nothing."""
        if not self.pool:
            self.pool.append(self.lent[0])
        self.lent.clear()

    # ------------------------------------------------------ background work
    def admit(self, act: Background) -> InFlight:
        """``act`` was given its in-flight slot and bytes: it is in flight from now.
        Twrite data is copied out of the receive buffer (reused once the I/O
        layer calls receive again)."""
        msg = act.msg
        if act.payload:
            msg.data = bytes(msg.data)
        p = InFlight(msg.tag)
        self.inflight[msg.tag] = p
        return p

    def run_blocking(self, msg: Any, handler: Callable[[Any], Message] | None) -> Any:
        """The body of a background request (in a worker thread): its reply buffer."""
        tag = msg.tag
        try:
            if handler is None:  # Tread
                return self.fill_rread(bytearray(11 + msg.count), tag, msg.fid, msg.offset, msg.count)
            r = handler(msg)
            return ENCODERS[type(r)](r)
        except OSError as e:
            return rlerror(tag, e.errno or errno.EIO)
        except Exception:
            log.exception("%s: tag=%d internal error in background request", self.name, tag)
            return rlerror(tag, errno.EIO)

    def finished(self, tag: int) -> InFlight:
        """The background request ``tag`` ended (its reply sent or dropped)."""
        return self.inflight.pop(tag)

    # Flush.  A Tflush of a background request (or of a Tflush waiting for
    # one) joins that request's list of waiting flushes: no task of its own,
    # one in-flight slot, its tag in ``inflight`` until answered.  They are
    # answered in arrival order right after the old reply was sent or dropped
    # (a second Tflush of the same old tag thus right after the first: it may
    # not be answered at once, since the old reply could still follow it).
    # Any other Tflush (a tag not in flight, already answered or flushed) is
    # answered at once, after the replies queued before it.
    def _flush_entry(self, dec: Callable[[Any, int], Message]) -> Callable[[int, memoryview], Any]:
        inflight = self.inflight

        def entry(tag: int, frame: memoryview) -> Any:
            oldtag = dec(frame[7:], tag).oldtag  # type: ignore[attr-defined]
            p = inflight.get(oldtag)
            if p is None or p.answered:
                return _rflush(tag)
            return FlushWait(tag, oldtag)

        return entry

    def join_flush(self, act: FlushWait) -> int:
        """The Tflush ``act`` holds an in-flight slot now: make it wait for its old
        request.  Returns the tag of the background request to cancel, or -1
        when that request was done meanwhile (the Rflush is queued in ``out``:
        the caller gives the slot back)."""
        p = self.inflight.get(act.oldtag)
        if p is None or p.answered:
            self._queue(_T_FLUSH, _rflush(act.tag))
            return -1
        p.flushes.append(act.tag)
        self.inflight[act.tag] = p
        return p.tag

    def next_flush(self, p: InFlight) -> bytes | None:
        """The next Rflush waiting for ``p`` (whose reply was sent or dropped), or None."""
        return _rflush(p.flushes[0]) if p.flushes else None

    def flush_answered(self, p: InFlight) -> None:
        """The first of ``p``'s waiting Tflushes was answered (or cannot be)."""
        del self.inflight[p.flushes.pop(0)]

    def flushes_done(self, p: InFlight) -> int:
        """No more Tflush of ``p`` waits (the rest are dropped: the connection is
        closing); a later one is answered at once.  Returns how many were dropped."""
        p.answered = True
        for tag in p.flushes:
            del self.inflight[tag]
        n = len(p.flushes)
        p.flushes.clear()
        return n

    # -------------------------------------------------------------- Tversion
    def _version(self, msg: Any) -> Versioned:
        limits = self.limits
        msize = min(msg.msize, limits.max_msize)
        open_pipe = False
        if msg.version == C.VERSION_9P2000L and msize >= MIN_MSIZE:
            version = C.VERSION_9P2000L
            self.msize = msize
            self.max_frame = msize
            self.budget = limits.inflight_msizes * msize
            self.pool.clear()
            # made here, not on the first read: the pipe is part of the session,
            # like the socket (an fd count taken after Tversion sees the same
            # number after every fid is clunked)
            open_pipe = bool(self.splice_max) and self.pipe_w < 0 and msize >= SPLICE_MIN + C.IOHDRSZ
            self.session.set_msize(msize)
        else:
            version = C.VERSION_UNKNOWN
            self.msize = 0
            self.max_frame = PRE_VERSION_FRAME
            log.info("%s: Tversion %r msize=%d refused", self.name, msg.version, msg.msize)
        reply = ENCODERS[Rversion](Rversion(tag=msg.tag, msize=msize, version=version))
        reset = bool(self.inflight) or bool(self.session.fid_count())
        self.state = State.RESETTING
        return Versioned(reply, reset, open_pipe)

    def version_done(self, act: Versioned) -> None:
        """The reset of ``act`` is done: the Rversion is queued and the new session starts."""
        self.state = _SERVING if self.msize else State.AWAITING_VERSION
        self._queue(_T_VERSION, act.reply)

    def _queue(self, mtype: int, reply: bytes) -> None:
        """Queue the reply to a ``mtype`` request outside :meth:`receive`'s loop."""
        self.out.append(reply)
        self.tx[mtype] += len(reply)


__all__ = [
    "DRAINED",
    "MIN_MSIZE",
    "PRE_VERSION_FRAME",
    "SEND",
    "Action",
    "Background",
    "Close",
    "ConnectionCore",
    "FlushWait",
    "InFlight",
    "Limits",
    "Splice",
    "State",
    "Versioned",
    "rlerror",
]
