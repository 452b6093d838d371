"""The hot entries' shortcuts give what the general paths give (#17, session 9).

Tlcreate takes its fid reference and its fd charge in one lock section and drops the
reference with the fid's update (``_entries.lcreate``); every other case goes the general
way (``_create_ref``), and the last reference of a fid clunked meanwhile is still let go
of.  A small Tread asks the backend's inline read, which answers ``BLOCKS`` for a FIFO
instead of a separate ``read_blocks`` call per Tread; the FIFO's read then goes to a
worker thread as before, large or small, with nothing read inline.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from corepeer import MSIZE, Peer, serving

from gofer9p.attach import AttachPoint, Backend
from gofer9p.attach import _fids as _fids_module
from gofer9p.attach._io import BLOCKS
from gofer9p.connection import BIG_READ, Background
from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import encode
from gofer9p.testing import is_compiled

ROOT = 0

replaces_methods = pytest.mark.skipif(
    is_compiled(_fids_module),
    reason="sees which backend methods a path calls by replacing them; the compiled "
    "backend binds its own calls (the default tier runs it on the pure build)",
)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "root"
    d.mkdir()
    (d / "d").mkdir()
    (d / "f").write_bytes(b"hello")
    return d


@pytest.fixture
def point(root: Path) -> Iterator[AttachPoint]:
    p = AttachPoint.open(str(root))
    yield p
    p.close()


def _errno(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def test_lcreate_of_a_fid_clunked_meanwhile_lets_it_go(
    point: AttachPoint, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tlcreate's reference is the last of its fid when a clunk took the fid out of the
    table while the file was being created: the update's lock section hands it to
    ``_put``, which closes the new file's fd and gives back its charge (none leaks)."""
    be = Backend(point)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"d"])
    base_fds, base_charged = _open_fds(), be.fds_charged()
    be.walk(1, 2)  # the clone the create turns into the file
    real_open = os.open

    def open_and_clunk(*args, **kwargs):  # type: ignore[no-untyped-def]
        fd = real_open(*args, **kwargs)
        if args[0] == b"new":
            be.clunk(2)  # (another thread's Tclunk, in a real server)
        return fd

    monkeypatch.setattr(os, "open", open_and_clunk)
    q = be.lcreate(2, b"new", C.L_O_RDWR, 0o640, C.NONUNAME)
    monkeypatch.undo()
    assert q.path and (root / "d" / "new").stat().st_mode & 0o777 == 0o640
    assert be.fid_count() == 2 and _errno(be.clunk, 2) == errno.EBADF
    assert _open_fds() == base_fds and be.fds_charged() == base_charged
    be.close()


def test_lcreate_errors_take_no_charge(point: AttachPoint) -> None:
    """The cases the one-section path leaves to the general one answer what they
    answered, and charge nothing: an unknown fid, a file, an opened directory, an xattr
    fid; and a fid whose fds were reclaimed is reopened, then created in."""
    be = Backend(point, fd_share=64)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"f"])
    be.walk(ROOT, 2, [b"d"])
    be.open(2, C.L_O_RDONLY)
    be.xattrwalk(ROOT, 3, b"")
    charged = be.fds_charged()
    assert _errno(be.lcreate, 99, b"x", C.L_O_RDWR, 0o600, 0) == errno.EBADF
    assert _errno(be.lcreate, 1, b"x", C.L_O_RDWR, 0o600, 0) == errno.ENOTDIR
    assert _errno(be.lcreate, 2, b"x", C.L_O_RDWR, 0o600, 0) == errno.EINVAL
    assert _errno(be.lcreate, 3, b"x", C.L_O_RDWR, 0o600, 0) == errno.EINVAL
    assert be.fds_charged() == charged
    be.walk(ROOT, 4, [b"d"])
    with be._lock:  # reclaim fid 4's fds as a full share would
        f = be._fids[4]
        be._holders.pop(f)
        fds = be._idle(f, 0)
    for fd in fds:
        os.close(fd)
    assert f.idle
    be.lcreate(4, b"x", C.L_O_RDWR, 0o600, C.NONUNAME)  # the general path reopens it
    assert not f.idle and be.write(4, 0, b"abc") == 3
    be.close()
    assert be.fds_charged() == 0


def test_inline_read_of_a_fifo_answers_blocks(point: AttachPoint, root: Path) -> None:
    """``read(..., inline=True)`` reads a regular file as before and answers BLOCKS for a
    FIFO without reading it; without ``inline`` (a worker thread's read) it reads it."""
    os.mkfifo(root / "p")
    w = os.open(root / "p", os.O_RDWR | os.O_NONBLOCK)
    be = Backend(point)
    try:
        be.attach(ROOT, 0, b"")
        be.walk(ROOT, 1, [b"f"])
        be.open(1, C.L_O_RDONLY)
        buf = bytearray(8)
        assert be.read(1, 1, memoryview(buf), -1, 0, True) == 4 and buf[:4] == b"ello"
        be.walk(ROOT, 2, [b"p"])
        be.open(2, C.L_O_RDONLY)
        os.write(w, b"fifo")
        assert be.read(2, 0, memoryview(buf), -1, 0, True) == BLOCKS
        assert be.read(2, 0, memoryview(buf)) == 4 and buf[:4] == b"fifo"
    finally:
        os.close(w)
        be.close()


@pytest.fixture
def peer(point: AttachPoint) -> Iterator[Peer]:
    p = serving(point, 1)
    yield p
    p.core.session.reset()


@pytest.mark.parametrize("count", [100, BIG_READ, MSIZE])
def test_treads_of_a_fifo_go_to_a_worker_thread(peer: Peer, root: Path, count: int) -> None:
    """A Tread of an open FIFO, small (the inline read's BLOCKS) or large (asked before a
    buffer is taken), is a Background request with its whole reply in the byte budget,
    and nothing is read from the FIFO inline."""
    os.mkfifo(root / "p")
    w = os.open(root / "p", os.O_RDWR | os.O_NONBLOCK)
    try:
        assert isinstance(peer.call(M.Twalk(tag=2, fid=1, newfid=2, wnames=[b"p"])), M.Rwalk)
        assert isinstance(peer.call(M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY)), M.Rlopen)
        os.write(w, b"fifo")
        act = peer.feed(encode(M.Tread(tag=4, fid=2, offset=0, count=count)))
        assert isinstance(act, Background) and act.handler is None
        n = min(count, MSIZE - C.IOHDRSZ)
        assert act.msg.count == n and act.reply == 11 + n and not peer.core.pool
        assert os.read(w, 10) == b"fifo"  # still there: not read inline
    finally:
        os.close(w)


def test_tlopen_without_trunc_makes_no_message(peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Tlopen without O_TRUNC is opened inline by its entry (the backend's open, no
    message decoded or encoded): the session's general handler is never called, and its
    Rlopen is the one the general path encodes.  With O_TRUNC it is a Background
    request for a worker thread, as before; a malformed frame is EINVAL."""
    core = peer.core
    general = core.session.handlers[C.MsgType.TLOPEN]

    def refuse(m: M.Message) -> M.Message:
        raise AssertionError("the general Tlopen handler was called")

    monkeypatch.setitem(core.session.handlers, C.MsgType.TLOPEN, refuse)
    core.table = core._build_table()
    assert isinstance(peer.call(M.Twalk(tag=2, fid=1, newfid=2, wnames=[b"f"])), M.Rwalk)
    r = peer.call(M.Tlopen(tag=3, fid=2, flags=C.L_O_RDONLY))
    assert isinstance(r, M.Rlopen) and r.iounit == 0
    assert isinstance(peer.call(M.Tlopen(tag=4, fid=2, flags=C.L_O_RDONLY)), M.Rlerror)
    monkeypatch.setitem(core.session.handlers, C.MsgType.TLOPEN, general)
    core.table = core._build_table()
    assert isinstance(peer.call(M.Twalk(tag=2, fid=1, newfid=3, wnames=[b"f"])), M.Rwalk)
    assert peer.call(M.Tlopen(tag=5, fid=3, flags=C.L_O_RDONLY)) == M.Rlopen(5, r.qid, 0)
    assert isinstance(peer.call(M.Twalk(tag=2, fid=1, newfid=4, wnames=[b"f"])), M.Rwalk)
    act = peer.feed(encode(M.Tlopen(tag=6, fid=4, flags=C.L_O_WRONLY | C.L_O_TRUNC)))
    assert isinstance(act, Background) and act.handler is general
    bad = encode(M.Tlopen(tag=7, fid=4, flags=0)) + b"x"
    peer.feed(len(bad).to_bytes(4, "little") + bad[4:])
    (e,) = peer.replies()
    assert isinstance(e, M.Rlerror) and e.ecode == errno.EINVAL


@replaces_methods
def test_clunk_of_an_unused_fid_is_one_section(point: AttachPoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Tclunk of a fid no request is using lets it go in the section that takes it out
    of the table (no ``_take``, no ``_put``): its fd is closed and its charge given back."""
    be = Backend(point)
    be.attach(ROOT, 0, b"")
    base_fds, base_charged = _open_fds(), be.fds_charged()
    be.walk(ROOT, 1, [b"f"])
    assert _open_fds() == base_fds + 1
    for name in ("_take", "_put"):
        monkeypatch.setattr(be, name, lambda *a, name=name: pytest.fail(f"{name} called"))
    be.clunk(1)
    monkeypatch.undo()
    assert _open_fds() == base_fds and be.fds_charged() == base_charged
    assert _errno(be.clunk, 1) == errno.EBADF
    be.close()


def test_clunk_of_a_fid_in_use_closes_at_the_last_reference(point: AttachPoint) -> None:
    """A fid an in-flight request holds is out of the table at its Tclunk, but its fds
    are closed only when that request drops its reference; an xattrcreate fid's clunk
    still commits the value."""
    be = Backend(point)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 3, [b"f"])
    be.open(3, C.L_O_RDONLY)  # the point caches a mount fd for re-opens (kept)
    be.clunk(3)
    base_fds, base_charged = _open_fds(), be.fds_charged()
    be.walk(ROOT, 1, [b"f"])
    f = be._ref(1)  # (a worker thread's request, in a real server)
    be.clunk(1)
    assert be.fid_count() == 1 and _open_fds() == base_fds + 1
    be._put(f)
    assert _open_fds() == base_fds and be.fds_charged() == base_charged
    be.walk(ROOT, 2, [b"f"])
    be.xattrcreate(2, b"user.k", 3, 0)
    assert be.write(2, 0, b"abc", True) == 3
    be.clunk(2)
    assert os.getxattr(point.path + "/f", "user.k") == b"abc"
    assert _open_fds() == base_fds and be.fds_charged() == base_charged
    be.close()


def test_syscall_buffers_need_no_create_string_buffer(
    point: AttachPoint, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file handle of a Tlopen's re-open, a birth time and a file system's magic are
    read into buffers of array types made once (no ``create_string_buffer`` call each),
    and give what they gave (the reads of the first lines, and an open by handle)."""
    from gofer9p.attach import _sys

    fd = os.open(root / "f", os.O_PATH)
    try:
        before = _sys.file_handle(fd)
        birth, magic = _sys.birth_time(fd), _sys.fs_magic(fd)
        monkeypatch.setattr(
            _sys.ctypes, "create_string_buffer", lambda *a: pytest.fail("create_string_buffer"))
        h, mount_id = _sys.file_handle(fd)
        assert bytes(h) == bytes(before[0]) and mount_id == before[1]
        assert _sys.birth_time(fd) == birth and _sys.fs_magic(fd) == magic
        be = Backend(point)
        be.attach(ROOT, 0, b"")
        be.walk(ROOT, 1, [b"f"])
        be.open(1, C.L_O_RDONLY)
        buf = bytearray(5)
        assert be.read(1, 0, memoryview(buf)) == 5 and buf == b"hello"
        be.close()
    finally:
        os.close(fd)


@replaces_methods
def test_open_takes_its_reference_and_charge_in_one_section(
    point: AttachPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Tlopen of a fid in the table with room in the share takes its reference and fd
    charge in one lock section and gives the reference back with the fid's update (no
    ``_ref``, ``_charge_fid`` or ``_put``), for a file and a directory alike."""
    be = Backend(point)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"f"])
    be.walk(ROOT, 2, [b"d"])
    charged = be.fds_charged()
    for name in ("_ref", "_charge_fid", "_put"):
        monkeypatch.setattr(be, name, lambda *a, name=name: pytest.fail(f"{name} called"))
    assert be.open(1, C.L_O_RDONLY).type == 0
    assert be.open(2, C.L_O_RDONLY | C.L_O_DIRECTORY).type == 0x80
    monkeypatch.undo()
    assert be.fds_charged() == charged + 2 and be._fids[1].refs == be._fids[2].refs == 0
    buf = bytearray(5)
    assert be.read(1, 0, memoryview(buf)) == 5 and buf == b"hello"
    be.close()
    assert be.fds_charged() == 0


def test_open_errors_take_no_charge(point: AttachPoint) -> None:
    """The cases the one-section path leaves to the general one answer what they
    answered and charge nothing: an unknown fid, an opened fid, an xattr fid, a
    directory opened to write; and a fid whose fds were reclaimed is reopened, then
    opened."""
    be = Backend(point, fd_share=64)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [b"f"])
    be.open(1, C.L_O_RDONLY)
    be.walk(ROOT, 2, [b"d"])
    be.xattrwalk(ROOT, 3, b"")
    charged = be.fds_charged()
    assert _errno(be.open, 99, C.L_O_RDONLY) == errno.EBADF
    assert _errno(be.open, 1, C.L_O_RDONLY) == errno.EINVAL
    assert _errno(be.open, 3, C.L_O_RDONLY) == errno.EINVAL
    assert _errno(be.open, 2, C.L_O_WRONLY) == errno.EISDIR
    assert _errno(be.open, 2, C.L_O_RDONLY | C.L_O_TRUNC) == errno.EISDIR
    assert be.fds_charged() == charged and all(f.refs == 0 for f in be._fids.values())
    be.walk(ROOT, 4, [b"f"])
    with be._lock:  # reclaim fid 4's fds as a full share would
        f = be._fids[4]
        be._holders.pop(f)
        fds = be._idle(f, 0)
    for fd in fds:
        os.close(fd)
    assert f.idle
    be.open(4, C.L_O_RDONLY)  # the general path reopens it
    buf = bytearray(5)
    assert not f.idle and be.read(4, 0, memoryview(buf)) == 5 and buf == b"hello"
    be.close()
    assert be.fds_charged() == 0


@replaces_methods
def test_open_of_a_fid_clunked_meanwhile_lets_it_go(
    point: AttachPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tlopen's reference is the last of its fid when a clunk took the fid out of the
    table while the file was being opened: the update's lock section hands it to
    ``_put``, which closes the open fd with the fid's and gives back their charge."""
    from gofer9p.attach import _reopen

    be = Backend(point)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 3, [b"f"])
    be.open(3, C.L_O_RDONLY)  # the point caches a mount fd for re-opens (kept)
    be.clunk(3)
    base_fds, base_charged = _open_fds(), be.fds_charged()
    be.walk(ROOT, 1, [b"f"])
    real = _reopen.Reopen._reopen

    def reopen_and_clunk(self, f, hflags):  # type: ignore[no-untyped-def]
        fd = real(self, f, hflags)
        be.clunk(1)  # (another thread's Tclunk, in a real server)
        return fd

    monkeypatch.setattr(_reopen.Reopen, "_reopen", reopen_and_clunk)
    assert be.open(1, C.L_O_RDONLY).type == 0
    monkeypatch.undo()
    assert _errno(be.clunk, 1) == errno.EBADF
    assert _open_fds() == base_fds and be.fds_charged() == base_charged
    be.close()


def test_treaddir_makes_no_message(peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Treaddir is answered by its fixed-layout entry (the backend's readdir, no message
    decoded or encoded): the session's general handler is never called, and the Rreaddir
    is the one it made, from cookie 0 and from a cookie of the listing, to the empty one
    at the end; a malformed frame is EINVAL."""
    core = peer.core
    general = core.session.handlers[C.MsgType.TREADDIR]
    monkeypatch.setitem(
        core.session.handlers, C.MsgType.TREADDIR, lambda m: pytest.fail("general Treaddir"))
    core.table = core._build_table()
    assert isinstance(peer.call(M.Twalk(tag=2, fid=1, newfid=2, wnames=[])), M.Rwalk)
    assert isinstance(peer.call(M.Tlopen(tag=3, fid=2, flags=C.L_O_DIRECTORY)), M.Rlopen)
    offset, replies = 0, []
    while True:
        r = peer.call(M.Treaddir(tag=4, fid=2, offset=offset, count=40))
        assert isinstance(r, M.Rreaddir)
        replies.append(bytes(r.data))
        if not r.data:
            break
        offset = _last_cookie(bytes(r.data))
    assert len(replies) >= 3  # ".", "..", "d", "f": 40 bytes hold one or two
    expected = [bytes(general(M.Treaddir(tag=4, fid=2, offset=o, count=40)).data)  # type: ignore[attr-defined]
                for o in [0, *(_last_cookie(d) for d in replies[:-1])]]
    assert replies == expected
    bad = encode(M.Treaddir(tag=5, fid=2, offset=0, count=40)) + b"x"
    peer.feed(len(bad).to_bytes(4, "little") + bad[4:])
    (e,) = peer.replies()
    assert isinstance(e, M.Rlerror) and e.ecode == errno.EINVAL


def _last_cookie(data: bytes) -> int:
    """The cookie (offset) of the last 9P dirent in ``data``."""
    pos = last = 0
    while pos < len(data):
        last = int.from_bytes(data[pos + 13 : pos + 21], "little")
        pos += 24 + int.from_bytes(data[pos + 22 : pos + 24], "little")
    return last


def test_readdir_releases_its_reference_without_with(
    point: AttachPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Treaddir pairs its reference with ``_put`` (no ``with``: two calls fewer per
    Treaddir), and still releases it when it fails (a count too small: EINVAL)."""
    from gofer9p.attach._fids import _Fid

    be = Backend(point)
    be.attach(ROOT, 0, b"")
    be.walk(ROOT, 1, [])
    be.open(1, C.L_O_RDONLY | C.L_O_DIRECTORY)
    monkeypatch.setattr(_Fid, "__enter__", lambda self: pytest.fail("with"))
    assert len(be.readdir(1, 0, 4096)) > 0
    assert _errno(be.readdir, 1, 0, 10) == errno.EINVAL
    assert be._fids[1].refs == 0
    be.close()
