"""Unit tests of the fid-level backend (gofer9p/attach/backend.py and its modules):
plain values in and out, no messages; the fid table's references; the seam
between the backend and the protocol side (session.py).

Runs as the test user; the attach point is a fresh directory per test.
"""

from __future__ import annotations

import ast
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import gofer9p.attach as attach_pkg
from gofer9p.attach import AttachPoint, Backend, FdBudget, Session
from gofer9p.protocol import constants as C
from gofer9p.protocol.messages import Qid

ROOT = 0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "root"
    d.mkdir()
    (d / "f").write_bytes(b"hello")
    (d / "d").mkdir()
    return d


@pytest.fixture
def b(root: Path) -> Iterator[Backend]:
    p = AttachPoint.open(str(root))
    be = Backend(p)
    be.attach(ROOT, 0, b"")
    yield be
    be.reset()
    p.close()


def _errno(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args)  # type: ignore[operator]
    return ei.value.errno or 0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------- the fid table


def test_ref_holds_fds_past_clunk_until_the_block_ends(b: Backend) -> None:
    """A reference taken with ``with`` keeps the fid's fds open when the fid is clunked
    meanwhile (another thread's clunk); leaving the block closes them and gives the
    fid's fd charge back."""
    b.walk(ROOT, 1, [b"f"])
    b.open(1, C.L_O_RDONLY)
    charged = b.fds_charged()
    with b._ref(1) as f:
        b.clunk(1)
        assert b.fid_count() == 1  # only the root is left in the table
        assert os.pread(f.ofd, 5, 0) == b"hello"
        assert b.fds_charged() == charged  # still held: still charged
        ofd = f.ofd
    assert f.ofd == -1
    assert _errno(os.fstat, ofd) == errno.EBADF
    assert b.fds_charged() == charged - 2  # its fd and open fd; the parent is the root's


def test_ref_is_dropped_when_the_block_raises(b: Backend) -> None:
    """An exception inside the block drops the reference as a normal exit does."""
    b.walk(ROOT, 1, [b"f"])
    with pytest.raises(RuntimeError), b._ref(1) as f:
        b.clunk(1)
        raise RuntimeError("boom")
    assert f.refs == 0
    assert f.fd == -1  # closed by the dropped reference


def test_nested_refs_close_at_the_last(b: Backend) -> None:
    b.walk(ROOT, 1, [b"f"])
    with b._ref(1) as f, b._ref(1) as g:
        assert f is g and f.refs == 2
        b.clunk(1)
    assert f.refs == 0 and f.fd == -1


def test_take_removes_at_once_and_unknown_fids_are_ebadf(b: Backend) -> None:
    b.walk(ROOT, 1, [b"f"])
    with b._take(1):
        assert _errno(b._ref, 1) == errno.EBADF
    assert _errno(b._take, 1) == errno.EBADF
    assert _errno(b.getattr, 1, C.GETATTR_BASIC) == errno.EBADF


def test_fid_limit_and_fd_share(root: Path) -> None:
    """The fid limit is EMFILE; the fd share counts the fds fids really hold (1 for an
    unopened directory, 1 for a file plus 1 for the directory it was walked from, which
    only it holds here, +1 open); at the share idle fids' fds are reclaimed first, and
    what is pinned (open) is refused past it."""
    (root / "d" / "g").write_bytes(b"")
    p = AttachPoint.open(str(root))
    try:
        be = Backend(p, max_fids=2, fd_share=4)
        be.attach(ROOT, 0, b"")
        be.walk(ROOT, 1, [b"d", b"g"])  # its directory's fd is not the root's: its own
        assert _errno(be.walk, ROOT, 2) == errno.EMFILE  # the fid limit
        assert be.fds_charged() == 3
        be.open(1, C.L_O_RDONLY)
        assert be.fds_charged() == 4  # the share is full
        assert be.charge_fds(1)  # the idle root's fd is reclaimed for it
        assert not be.charge_fds(1)  # all that is left is pinned: the open file
        assert _errno(be.getattr, ROOT, C.GETATTR_BASIC) == errno.EMFILE  # no room to reopen
        be.release_fds(1)
        assert be.getattr(ROOT, C.GETATTR_BASIC)[0] == C.GETATTR_BASIC  # reopened
        assert be.fd_budget.reclaims == 1 and be.fd_budget.reopens == 1
        be.clunk(1)
        assert be.fds_charged() == 1
        be.reset()
        assert be.fds_charged() == 0
    finally:
        p.close()


def test_budget_is_split_between_sessions(root: Path) -> None:
    """One FdBudget, two sessions: the first alone has the whole pool; when the second
    registers, the first gives back idle fds down to its new half at once; when the second
    leaves, the first has the whole pool again.  The counters add up across sessions."""
    p = AttachPoint.open(str(root))
    try:
        budget = FdBudget(40, reserve=0, connections=2)
        a = Backend(p, fd_budget=budget)
        assert a.fd_share == 40 and a.pin_share == 20
        a.attach(ROOT, 0, b"")
        for fid in range(1, 31):
            a.walk(ROOT, fid, [b"d"])  # a directory walked 30 times: one fd each, idle
        assert a.fds_charged() == budget.in_use == 31
        b = Backend(p, fd_budget=budget)
        assert a.fd_share == b.fd_share == 20
        assert a.fds_charged() <= 20 and budget.reclaims >= 11
        b.attach(ROOT, 0, b"")
        assert budget.in_use == a.fds_charged() + b.fds_charged() <= 40
        b.close()
        assert a.fd_share == 40 and a.pin_share == 20
        for fid in range(31):  # every fid still answers: reopened as needed
            assert a.getattr(fid, C.GETATTR_BASIC)[0] == C.GETATTR_BASIC
        assert budget.reopens == budget.reclaims
        a.close()
        assert budget.in_use == 0
    finally:
        p.close()


# ----------------------------------------------------------- plain values in and out


def test_attach_walk_and_clone_answer_qids(b: Backend, root: Path) -> None:
    qids = b.walk(ROOT, 1, [b"d", b"..", b"f"])
    assert len(qids) == 3 and all(isinstance(q, Qid) for q in qids)
    assert qids[0].type == C.QidType.DIR and qids[2].type == C.QidType.FILE
    assert list(b.walk(1, 2)) == []  # a clone
    assert b.getattr(2, C.GETATTR_BASIC)[3] == qids[2].path
    # a name after the first that fails: fewer qids, no new fid
    assert len(b.walk(ROOT, 3, [b"d", b"nope"])) == 1
    assert _errno(b.getattr, 3, C.GETATTR_BASIC) == errno.EBADF


def test_getattr_is_the_wire_order_of_rgetattr(b: Backend, root: Path) -> None:
    b.walk(ROOT, 1, [b"f"])
    v = b.getattr(1, C.GETATTR_ALL)
    st = os.stat(root / "f")
    assert len(v) == 22
    assert v[0] == C.GETATTR_BASIC
    assert v[4:10] == (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev, st.st_size)
    assert (v[14], v[15]) == divmod(st.st_mtime_ns, 1_000_000_000)


def test_read_write_and_splice_in_bytes(b: Backend, root: Path) -> None:
    b.walk(ROOT, 1, [b"f"])
    b.open(1, C.L_O_RDWR)
    assert b.write(1, 5, memoryview(b" world")) == 6
    buf = bytearray(64)
    assert b.read(1, 0, memoryview(buf)) == 11 and buf[:11] == b"hello world"
    r, w = os.pipe()
    try:
        assert b.read(1, 6, memoryview(b""), w, 100) == 5
        assert os.read(r, 100) == b"world"
        assert b.read(1, 11, memoryview(b""), w, 100) == 0  # EOF
        b.walk(ROOT, 2, [b"d"])
        b.open(2, C.L_O_RDONLY)
        assert b.read(2, 0, memoryview(b""), w, 100) == -1  # not a regular file
        assert _errno(b.read, 2, 0, memoryview(buf)) == errno.EISDIR
    finally:
        os.close(r)
        os.close(w)
    assert b.read_size(1, 4, 100) == 7


def test_inline_write_only_to_open_regular_files(b: Backend, root: Path) -> None:
    """Without ``general`` (the server's inline fast path) ``write`` answers -1 for all
    but an open regular file, and writes nothing; the general path writes a FIFO and
    answers an unopened fid's EBADF.  An unknown fid is EBADF either way."""
    os.mkfifo(root / "p")
    r = os.open(root / "p", os.O_RDONLY | os.O_NONBLOCK)
    try:
        b.walk(ROOT, 1, [b"p"])
        b.open(1, C.L_O_WRONLY)
        assert b.read_blocks(1)
        assert b.write(1, 0, b"abc") == -1
        with pytest.raises(BlockingIOError):
            os.read(r, 10)  # nothing written yet
        assert b.write(1, 0, b"abc", True) == 3
        assert os.read(r, 10) == b"abc"
    finally:
        os.close(r)
    b.walk(ROOT, 2, [b"f"])  # not opened
    assert b.write(2, 0, b"x") == -1
    assert _errno(b.write, 2, 0, b"x", True) == errno.EBADF
    assert _errno(b.write, 99, 0, b"x") == errno.EBADF
    assert _errno(b.write, 99, 0, b"x", True) == errno.EBADF
    b.open(2, C.L_O_WRONLY)
    assert b.write(2, 0, b"J") == 1
    assert (root / "f").read_bytes() == b"Jello"


def test_entries_statfs_readlink_and_locks(b: Backend, root: Path) -> None:
    q = b.mkdir(ROOT, b"new", 0o750, C.NONUNAME)
    assert q.type == C.QidType.DIR and stat.S_IMODE(os.stat(root / "new").st_mode) == 0o750
    b.symlink(ROOT, b"l", b"target", C.NONUNAME)
    b.walk(ROOT, 1, [b"l"])
    assert b.readlink(1) == b"target"
    assert b.statfs(ROOT)[0] == 0x01021997  # V9FS_MAGIC
    b.walk(ROOT, 2, [b"d"])
    q = b.lcreate(2, b"c", C.L_O_RDWR, 0o600, C.NONUNAME)
    assert q.type == C.QidType.FILE and (root / "d" / "c").exists()
    assert b.lock(2, C.LOCK_TYPE_WRLCK, 0, 0, 1, b"a") == C.LOCK_SUCCESS
    assert b.getlock(2, C.LOCK_TYPE_WRLCK, 0, 0, 1, b"a") == (
        C.LOCK_TYPE_UNLCK, 0, 0, 1, b"a")  # its own lock never conflicts
    b.rename(2, ROOT, b"moved")
    assert (root / "moved").exists()
    b.unlinkat(ROOT, b"new", C.AT_REMOVEDIR)
    assert not (root / "new").exists()


def test_xattr_values_through_the_backend(b: Backend, root: Path) -> None:
    b.walk(ROOT, 1, [b"f"])
    b.walk(ROOT, 2, [b"f"])
    try:
        b.xattrcreate(2, b"user.k", 3, 0)
    except OSError as e:  # a tmpfs without user xattrs
        pytest.skip(os.strerror(e.errno or 0))
    assert b.write(2, 0, b"val") == -1  # an xattr fid: not the inline case
    assert b.write(2, 0, b"val", True) == 3
    try:
        b.clunk(2)  # commits
    except OSError as e:
        pytest.skip(os.strerror(e.errno or 0))
    assert b.xattrwalk(1, 3, b"user.k") == 3
    buf = bytearray(8)
    assert b.read(3, 0, memoryview(buf)) == 3 and buf[:3] == b"val"


# ------------------------------------------------------------------------- the seam


def test_session_hot_entries_are_the_backends_own_methods(root: Path) -> None:
    """The server's plain entries add no layer: each is the backend method itself, so
    each request has one implementation."""
    p = AttachPoint.open(str(root))
    try:
        s = Session(p)
        be = s.backend
        for entry, method in [
            (s.getattr_frame, be.getattr_frame), (s.clunk_fid, be.clunk),
            (s.remove_fid, be.remove), (s.clone_fid, be.walk),
            (s.write_regular, be.write), (s.read_into, be.read),
        ]:
            assert entry == method  # a bound method of the same backend and function
    finally:
        p.close()


def test_backend_modules_know_no_message() -> None:
    """Only session.py (the protocol side) imports message classes other than Qid,
    and nothing under attach/ imports session.py."""
    pkg = Path(attach_pkg.__file__).parent
    for path in sorted(pkg.glob("*.py")):
        if path.name in ("session.py", "__init__.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module != "gofer9p.attach.session", path.name
                if node.module == "gofer9p.protocol.messages":
                    assert {a.name for a in node.names} <= {"Qid"}, path.name


def test_backend_leaves_read_only_to_the_connection_core() -> None:
    """The read-only policy has one place, the connection core's dispatch table
    (tests/unit/test_connection_core.py): no module under attach/ but point.py,
    which holds the flags, reads ``readonly`` or ``panic_on_write`` or panics."""
    pkg = Path(attach_pkg.__file__).parent
    for path in sorted(pkg.glob("*.py")):
        if path.name == "point.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("readonly", "panic_on_write", "panic"), path.name
