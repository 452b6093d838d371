"""Helpers shared by the unit tests that drive a ``ConnectionCore`` with bytes.

A :class:`Peer` feeds encoded frames to a core over a Session of an attach
point and decodes the replies it queues, as the trio layer would (no sockets,
no trio).  The read-only tests of the attach layer use it too: the read-only
policy lives in the core's dispatch table, so they go through it.
"""

from __future__ import annotations

import errno
from typing import NoReturn

from gofer9p.attach import AttachPoint, Session
from gofer9p.connection import DRAINED, Action, ConnectionCore, Limits, Versioned
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import decode, encode

MSIZE = 1 << 20
FLUSH_BYTES = 256 * 1024


class Peer:
    """A core and the bytes fed to it so far (the buffer the I/O layer would own)."""

    def __init__(self, core: ConnectionCore) -> None:
        self.core = core
        self.buf = bytearray()
        self.start = 0

    def feed(self, data: bytes) -> Action:
        """Append ``data`` and let the core handle what is complete.  A new buffer
        each time, as the I/O layer's growth makes: views of the old one may live
        on (in a queued reply, or a log record's exception).  The frames the core
        consumed stay consumed even when an entry raises through ``receive`` (a
        test's stand-in for ``AttachPoint.panic``)."""
        self.buf = self.buf[self.start :] + data
        self.start = 0
        try:
            return self.core.receive(memoryview(self.buf), self.start, len(self.buf))
        finally:
            self.start = self.core.start

    def resume(self) -> Action:
        """Call receive again after an action (the I/O layer's loop)."""
        act = self.core.receive(memoryview(self.buf), self.start, len(self.buf))
        self.start = self.core.start
        return act

    def replies(self) -> list[M.Message]:
        return [decode(bytes(r)) for r in self.core.take()]

    def rpc(self, *msgs: M.Message) -> list[M.Message]:
        """Feed requests that are answered inline; their replies."""
        act = self.feed(b"".join(encode(m) for m in msgs))
        assert act is DRAINED, act
        return self.replies()

    def call(self, msg: M.Message) -> M.Message:
        """One request answered inline; its reply."""
        (r,) = self.rpc(msg)
        return r


def core_of(point: AttachPoint, *, splice_max: int = 0) -> ConnectionCore:
    """A new core over a new Session of ``point``."""
    session = Session(point, max_fids=64, msize=MSIZE, fd_share=256)
    return ConnectionCore(session, Limits(MSIZE, FLUSH_BYTES, 2, splice_max), "test")


def versioned(peer: Peer, tag: int = C.NOTAG) -> Versioned:
    """Feed a Tversion of MSIZE; the action the core asks for."""
    act = peer.feed(encode(M.Tversion(tag=tag, msize=MSIZE, version=C.VERSION_9P2000L)))
    assert isinstance(act, Versioned)
    return act


def serving(point: AttachPoint, fid: int) -> Peer:
    """A peer of a new core over ``point``, past Tversion and a Tattach of ``fid``."""
    p = Peer(core_of(point))
    act = versioned(p)
    assert not act.reset
    p.core.version_done(act)
    (rv,) = p.replies()
    assert isinstance(rv, M.Rversion) and rv.msize == MSIZE
    ra = p.call(M.Tattach(tag=1, fid=fid, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0))
    assert isinstance(ra, M.Rattach), ra
    return p


class Panicked(BaseException):
    """What :func:`fake_panic` raises: not an ``Exception``, which the core would
    answer as an internal error (the real ``AttachPoint.panic`` ends the process)."""


def fake_panic(point: AttachPoint) -> list[str]:
    """Make ``point.panic`` record its reason and raise :class:`Panicked`; the
    list of reasons."""
    reasons: list[str] = []

    def panic(reason: str) -> NoReturn:
        reasons.append(reason)
        raise Panicked

    point.panic = panic  # type: ignore[method-assign]
    return reasons


def ecode(r: M.Message) -> int:
    """The errno of an Rlerror (anything else fails the test)."""
    assert isinstance(r, M.Rlerror), r
    return r.ecode


def refused(p: Peer, code: int, msg: M.Message) -> None:
    """``msg`` is answered inline with Rlerror ``code``."""
    got = ecode(p.call(msg))
    assert got == code, (errno.errorcode.get(got), errno.errorcode[code], msg)

