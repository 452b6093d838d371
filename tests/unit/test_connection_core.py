"""The sans-IO connection core: bytes in, replies and actions out (no sockets, no trio).

Each test feeds encoded frames to a ``ConnectionCore`` over a Session of a tmp
directory and checks the replies it queues, the actions it asks of the I/O
layer and its state.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from corepeer import (
    FLUSH_BYTES,
    MSIZE,
    Panicked,
    Peer,
    core_of,
    ecode,
    fake_panic,
    serving,
    versioned,
)

from gofer9p.attach import AttachPoint
from gofer9p.connection import (
    DRAINED,
    PRE_VERSION_FRAME,
    SEND,
    Background,
    Close,
    ConnectionCore,
    FlushWait,
    Splice,
    State,
    Versioned,
)
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import decode, encode


def _core(tmp_path: Path, *, readonly: bool = False, splice_max: int = 0) -> ConnectionCore:
    return core_of(AttachPoint.open(str(tmp_path), readonly=readonly), splice_max=splice_max)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    """A core past Tversion and Tattach (fid 1: the root)."""
    p = serving(AttachPoint.open(str(tmp_path)), 1)
    yield p
    p.core.session.reset()


def test_awaiting_version_answers_only_tversion(tmp_path: Path) -> None:
    p = Peer(_core(tmp_path))
    assert p.core.state is State.AWAITING_VERSION and p.core.max_frame == PRE_VERSION_FRAME
    (r,) = p.rpc(M.Tgetattr(tag=3, fid=1, request_mask=C.GETATTR_BASIC))
    assert ecode(r) == errno.EPROTO and r.tag == 3
    bad = p.feed(encode(M.Tversion(tag=C.NOTAG, msize=MSIZE, version=b"9P2000.u")))
    assert isinstance(bad, Versioned)
    p.core.version_done(bad)
    (rv,) = p.replies()
    assert isinstance(rv, M.Rversion) and rv.version == C.VERSION_UNKNOWN
    assert p.core.state is State.AWAITING_VERSION
    act = versioned(p)
    assert p.core.state is State.RESETTING and p.core.max_frame == MSIZE
    p.core.version_done(act)
    assert p.core.state is State.SERVING


def test_pipelined_frames_byte_by_byte(peer: Peer) -> None:
    """Frames cut anywhere: each reply comes once its last byte is in; the partial
    frame's announced size is known from its fourth byte."""
    frames = encode(M.Twalk(tag=5, fid=1, newfid=2, wnames=[])) + encode(
        M.Tgetattr(tag=6, fid=2, request_mask=C.GETATTR_BASIC)
    )
    got: list[M.Message] = []
    for i in range(len(frames)):
        assert peer.feed(frames[i : i + 1]) is DRAINED
        got += peer.replies()
        left = len(peer.buf) - peer.start
        assert peer.core.need == (0 if left < 4 else (17 if i < 17 else 19))
    assert [type(r) for r in got] == [M.Rwalk, M.Rgetattr] and [r.tag for r in got] == [5, 6]


def test_framing_error_closes_after_the_replies_before_it(peer: Peer) -> None:
    act = peer.feed(encode(M.Tclunk(tag=7, fid=1)) + (MSIZE + 1).to_bytes(4, "little"))
    assert isinstance(act, Close) and act.size == MSIZE + 1
    assert peer.core.state is State.CLOSED
    assert [type(r) for r in peer.replies()] == [M.Rclunk]


def test_duplicate_tag_and_flush_of_a_background_request(peer: Peer) -> None:
    """A Tfsync goes to a worker thread; its tag is then in flight (a reuse is EINVAL);
    a Tflush of it waits and is answered after it, a second one right after the first."""
    peer.rpc(M.Twalk(tag=2, fid=1, newfid=2, wnames=[]))
    (ro,) = peer.rpc(M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
    assert isinstance(ro, M.Rlopen)
    act = peer.feed(encode(M.Tfsync(tag=10, fid=2, datasync=0)))
    assert isinstance(act, Background) and act.msg.tag == 10 and act.handler is not None
    p = peer.core.admit(act)
    assert peer.resume() is DRAINED
    (dup,) = peer.rpc(M.Tclunk(tag=10, fid=2))
    assert ecode(dup) == errno.EINVAL
    flush1 = peer.feed(encode(M.Tflush(tag=11, oldtag=10)))
    assert isinstance(flush1, FlushWait) and (flush1.tag, flush1.oldtag) == (11, 10)
    assert peer.core.join_flush(flush1) == 10  # the request to cancel
    flush2 = peer.resume()
    assert flush2 is DRAINED
    act2 = peer.feed(encode(M.Tflush(tag=12, oldtag=11)))  # a flush of the waiting flush
    assert isinstance(act2, FlushWait)
    assert peer.core.join_flush(act2) == 10
    reply = peer.core.run_blocking(act.msg, act.handler)
    assert isinstance(decode(reply), M.Rfsync)
    assert peer.core.finished(10) is p
    answered = []
    while (rf := peer.core.next_flush(p)) is not None:
        answered.append(decode(rf).tag)
        peer.core.flush_answered(p)
    assert answered == [11, 12] and peer.core.flushes_done(p) == 0
    assert not peer.core.inflight
    (late,) = peer.rpc(M.Tflush(tag=13, oldtag=10))  # nothing in flight: at once
    assert isinstance(late, M.Rflush) and late.tag == 13


def test_flush_that_finds_its_request_done_is_answered_at_once(peer: Peer) -> None:
    peer.rpc(M.Twalk(tag=2, fid=1, newfid=2, wnames=[]))
    peer.rpc(M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
    act = peer.feed(encode(M.Tfsync(tag=10, fid=2, datasync=0)))
    assert isinstance(act, Background)
    peer.core.admit(act)
    flush = peer.feed(encode(M.Tflush(tag=11, oldtag=10)))
    assert isinstance(flush, FlushWait)
    peer.core.finished(10)  # done while the flush waited for its slot
    assert peer.core.join_flush(flush) == -1
    assert [(type(r), r.tag) for r in peer.replies()] == [(M.Rflush, 11)]


def test_large_read_is_held_back_behind_small_replies(peer: Peer, tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(os.urandom(FLUSH_BYTES * 2))
    peer.rpc(M.Twalk(tag=2, fid=1, newfid=2, wnames=[b"big"]))
    peer.rpc(M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
    get = encode(M.Tgetattr(tag=5, fid=2, request_mask=C.GETATTR_BASIC))
    read = encode(M.Tread(tag=4, fid=2, offset=0, count=FLUSH_BYTES))
    act = peer.feed(read + get + encode(M.Tread(tag=6, fid=2, offset=0, count=100)))
    # the second Tread is ordered: the held reply must go first
    assert act is SEND
    assert [r.tag for r in peer.replies()] == [5, 4]
    assert peer.resume() is DRAINED
    (r6,) = peer.replies()
    assert isinstance(r6, M.Rread) and len(r6.data) == 100
    assert peer.core.lent  # the pooled buffer is lent until the I/O layer says it was sent
    peer.core.returned()
    assert not peer.core.lent and peer.core.pool


def test_spliced_read_asks_for_a_splice(tmp_path: Path) -> None:
    data = os.urandom(64 * 1024)
    (tmp_path / "f").write_bytes(data)
    p = Peer(_core(tmp_path, splice_max=200 * 1024))
    act = versioned(p)
    assert act.open_pipe  # the I/O layer makes the pipe
    r, w = os.pipe()
    try:
        p.core.pipe_w = w
        p.core.version_done(act)
        p.replies()
        p.rpc(M.Tattach(tag=1, fid=1, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0))
        p.rpc(M.Twalk(tag=2, fid=1, newfid=2, wnames=[b"f"]))
        p.rpc(M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
        sp = p.feed(encode(M.Tread(tag=4, fid=2, offset=0, count=len(data))))
        assert isinstance(sp, Splice) and sp.n == len(data)
        assert sp.header == struct.pack("<IBHI", 11 + sp.n, C.MsgType.RREAD, 4, sp.n)
        got = b""
        while len(got) < sp.n:
            got += os.read(r, sp.n - len(got))
        assert got == data
    finally:
        os.close(r)
        os.close(w)
        p.core.session.reset()


def test_tversion_with_fids_asks_for_a_reset(peer: Peer) -> None:
    act = versioned(peer, tag=C.NOTAG)
    assert act.reset and peer.core.state is State.RESETTING


def test_read_only_point_refuses_mutating_requests_before_any_handler(tmp_path: Path) -> None:
    """The policy, not the handler, answers EROFS: handlers of mutating requests are
    never called; a Tlopen for reading passes; a Tremove still clunks its fid."""
    (tmp_path / "f").write_bytes(b"x")
    p = serving(AttachPoint.open(str(tmp_path), readonly=True), 1)
    called: list[int] = []
    session = p.core.session
    for t in (C.MsgType.TMKDIR, C.MsgType.TSETATTR, C.MsgType.TXATTRCREATE):
        session.handlers[t] = lambda m, t=t: called.append(t)  # type: ignore[misc]
    p.core.table = p.core._build_table()
    p.rpc(M.Twalk(tag=2, fid=1, newfid=2, wnames=[b"f"]), M.Twalk(tag=3, fid=1, newfid=3, wnames=[b"f"]))
    got = p.rpc(
        M.Tmkdir(tag=4, dfid=1, name=b"d", mode=0o755, gid=0),
        M.Tsetattr(tag=5, fid=2, valid=C.SETATTR_MODE, mode=0o600, uid=0, gid=0, size=0,
                   atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0),
        M.Txattrcreate(tag=6, fid=2, name=b"user.a", attr_size=1, flags=0),
        M.Tlopen(tag=7, fid=3, flags=C.L_O_WRONLY),
        M.Tlopen(tag=8, fid=3, flags=C.L_O_RDONLY | C.L_O_TRUNC),
        M.Tlopen(tag=9, fid=3, flags=C.L_O_RDONLY),
        M.Twrite(tag=10, fid=3, offset=0, data=b"y"),
        M.Tremove(tag=11, fid=2),
        M.Tclunk(tag=12, fid=2),
    )
    byt = {r.tag: r for r in got}
    assert called == []
    for tag in (4, 5, 6, 7, 8, 10, 11):
        assert ecode(byt[tag]) == errno.EROFS, tag
    assert isinstance(byt[9], M.Rlopen)
    assert ecode(byt[12]) == errno.EBADF  # the Tremove clunked it
    assert (tmp_path / "f").read_bytes() == b"x" and not (tmp_path / "d").exists()
    session.reset()


def test_read_only_policy_covers_the_threaded_and_fixed_layout_entries(tmp_path: Path) -> None:
    """Requests that a read-write point sends to a worker thread (a Twrite to a FIFO,
    Tsetattr SIZE, Tlopen O_TRUNC) or answers in a fixed-layout entry (a Twrite to
    an open regular file, whose inline write the general path would otherwise
    answer; a Twrite to an unopened fid, which falls through to the general
    decoder) are refused inline with EROFS on a read-only point."""
    (tmp_path / "f").write_bytes(b"hello")
    os.mkfifo(tmp_path / "p")

    def requests(p: Peer) -> list[M.Message]:
        for fid, name in ((2, b"f"), (3, b"p"), (4, b"f")):
            assert isinstance(p.call(M.Twalk(tag=2, fid=1, newfid=fid, wnames=[name])), M.Rwalk)
        for fid in (2, 3):
            assert isinstance(p.call(M.Tlopen(tag=3, fid=fid, flags=C.L_O_RDONLY)), M.Rlopen)
        return [
            M.Twrite(tag=4, fid=3, offset=0, data=b"x"),
            M.Tsetattr(tag=4, fid=4, valid=C.SETATTR_SIZE, mode=0, uid=0, gid=0, size=0,
                       atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0),
            M.Tlopen(tag=4, fid=4, flags=C.L_O_RDONLY | C.L_O_TRUNC),
            M.Twrite(tag=4, fid=2, offset=0, data=b"x"),
            M.Twrite(tag=4, fid=4, offset=0, data=b"x"),
        ]

    rw = serving(AttachPoint.open(str(tmp_path)), 1)
    msgs = requests(rw)
    for m in msgs[:3]:
        assert isinstance(rw.feed(encode(m)), Background), m
    for m in msgs[3:]:  # the backend answers them: fid 2 is open for reading, 4 not open
        (r,) = rw.rpc(m)
        assert ecode(r) == errno.EBADF, m
    rw.core.session.reset()
    ro = serving(AttachPoint.open(str(tmp_path), readonly=True), 1)
    for m in requests(ro):
        (r,) = ro.rpc(m)  # answered inline
        assert ecode(r) == errno.EROFS, m
    assert (tmp_path / "f").read_bytes() == b"hello"
    ro.core.session.reset()


def test_panic_on_write_panics_from_the_policy(tmp_path: Path) -> None:
    point = AttachPoint.open(str(tmp_path), readonly=True, panic_on_write=True)
    reasons = fake_panic(point)
    p = serving(point, 1)
    session = p.core.session
    with pytest.raises(Panicked):
        p.feed(encode(M.Tmkdir(tag=4, dfid=1, name=b"d", mode=0o755, gid=0)))
    assert len(reasons) == 1 and "TMKDIR" in reasons[0]
    assert not (tmp_path / "d").exists()
    session.reset()


def test_fixed_layout_entries_answer_as_the_general_path(peer: Peer, tmp_path: Path) -> None:
    """Tgetattr, Twalk clone, Twrite, Tclunk with their fixed layouts; malformed sizes EINVAL."""
    peer.rpc(M.Twalk(tag=2, fid=1, newfid=2, wnames=[]))
    (rc,) = peer.rpc(M.Tlcreate(tag=3, fid=2, name=b"n", flags=C.L_O_RDWR, mode=0o644, gid=0))
    assert isinstance(rc, M.Rlcreate)
    (rw,) = peer.rpc(M.Twrite(tag=4, fid=2, offset=0, data=b"abc"))
    assert isinstance(rw, M.Rwrite) and rw.count == 3
    (rg,) = peer.rpc(M.Tgetattr(tag=5, fid=2, request_mask=C.GETATTR_BASIC))
    assert isinstance(rg, M.Rgetattr) and rg.size == 3
    good = encode(M.Tgetattr(tag=6, fid=2, request_mask=C.GETATTR_BASIC))
    bad = (len(good) + 1).to_bytes(4, "little") + good[4:] + b"\0"  # a byte too many
    assert peer.feed(bad) is DRAINED
    (r6,) = peer.replies()
    assert ecode(r6) == errno.EINVAL
    (rk,) = peer.rpc(M.Tclunk(tag=7, fid=2))
    assert isinstance(rk, M.Rclunk)
    assert (tmp_path / "n").read_bytes() == b"abc"
