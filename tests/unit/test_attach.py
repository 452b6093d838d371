"""Unit tests of gofer9p.attach: drive Session handlers directly with message objects.

No server and no sockets: each test builds T-messages, calls the handler and
checks the R-message and the host file system (the read-only tests feed them
to a connection core instead, whose policy refuses a read-only point's
mutating requests).  Runs as root (as in CI) so
that ownership can be checked with made-up uids.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from corepeer import Panicked, fake_panic, refused, serving
from sessionops import clunk, err, lopen, read, walk, write

from gofer9p.attach import AttachPoint, Session, is_blocking
from gofer9p.protocol import constants as C
from gofer9p.protocol.codec import encode
from gofer9p.protocol.messages import (
    Message,
    Qid,
    Rgetattr,
    Rlopen,
    Rread,
    Rwalk,
    Tattach,
    Tauth,
    Tclunk,
    Tfsync,
    Tgetattr,
    Tgetlock,
    Tlcreate,
    Tlink,
    Tlock,
    Tlopen,
    Tmkdir,
    Tmknod,
    Tread,
    Treaddir,
    Treadlink,
    Tremove,
    Trename,
    Trenameat,
    Tsetattr,
    Tstatfs,
    Tsymlink,
    Tunlinkat,
    Twalk,
    Twrite,
    Txattrcreate,
    Txattrwalk,
)

ROOT = 0
NOFID = C.NOFID


def as_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not as_root(), reason="needs root to chown")


@pytest.fixture(autouse=True)
def _umask0() -> Iterator[None]:
    # The daemon runs with umask 0; created modes are checked exactly.
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "root"
    d.mkdir()
    return d


@pytest.fixture
def point(root: Path) -> Iterator[AttachPoint]:
    p = AttachPoint.open(str(root))
    yield p
    p.close()


@pytest.fixture
def s(point: AttachPoint) -> Iterator[Session]:
    sess = Session(point)
    sess.attach(Tattach(1, ROOT, NOFID, b"", b"", 0))
    yield sess
    sess.reset()


def open_file(s: Session, fid: int, name: bytes, flags: int = C.L_O_RDONLY) -> None:
    walk(s, fid, *name.split(b"/"))
    lopen(s, fid, flags)


_ENT = struct.Struct("<BIQQBH")


def dirents(data: bytes) -> list[tuple[Qid, int, int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        qt, qv, qp, off, dt, n = _ENT.unpack_from(data, pos)
        pos += _ENT.size
        out.append((Qid(qt, qv, qp), off, dt, bytes(data[pos:pos + n])))
        pos += n
    return out


def readdir_all(s: Session, fid: int, count: int = 8192) -> list[tuple[Qid, int, int, bytes]]:
    out = []
    off = 0
    while True:
        ents = dirents(s.readdir(Treaddir(1, fid, off, count)).data)
        if not ents:
            return out
        out += ents
        off = ents[-1][1]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ attach


def test_attach_root_qid(point: AttachPoint, root: Path) -> None:
    s = Session(point)
    r = s.attach(Tattach(7, 0, NOFID, b"", b"", 0))
    assert r.tag == 7
    assert r.qid.type == C.QidType.DIR
    assert r.qid.path == root.stat().st_ino  # first device: qid path == inode number
    assert s.fid_count() == 1
    err(errno.EBADF, s.attach, Tattach(1, 0, NOFID, b"", b"", 0))
    s.reset()
    assert s.fid_count() == 0


@needs_root
def test_attach_uid_sources(point: AttachPoint, root: Path) -> None:
    s = Session(point)
    s.attach(Tattach(1, 1, NOFID, b"ignored", b"", 1234))
    s.attach(Tattach(1, 2, NOFID, b"2345", b"", C.NONUNAME))
    s.attach(Tattach(1, 3, NOFID, b"root", b"", C.NONUNAME))
    # unknown names (Linux's first attach sends "nobody") get the overflow uid
    s.attach(Tattach(1, 4, NOFID, b"no-such-user-xyz", b"", C.NONUNAME))
    err(errno.EINVAL, s.attach, Tattach(1, 5, NOFID, b"99999999999", b"", C.NONUNAME))
    for fid, uid in ((1, 1234), (2, 2345), (3, 0), (4, 65534)):
        s.mkdir(Tmkdir(1, fid, b"d%d" % fid, 0o755, 77))
        st = (root / f"d{fid}").stat()
        assert (st.st_uid, st.st_gid) == (uid, 77)
    s.reset()


def test_attach_aname_selects_nothing(point: AttachPoint, root: Path) -> None:
    """Any aname attaches the attach point's root: existing subdirectories, symlinks,
    files, host export paths and ".." tricks alike (the manager picks the root, not
    the sandbox)."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "f").write_text("x")
    (root / "link").symlink_to("sub")
    (root / "out").symlink_to("/etc")
    s = Session(point)
    anames = (b"", b"/", b"/some/host/export", b"..", b"../..", b"sub/nope", b"/sub/deeper",
              b"sub", b"link", b"out/passwd", b"f", b"sub/a\0", b"sub/deeper/../..")
    for fid, aname in enumerate(anames):
        assert s.attach(Tattach(1, fid, NOFID, b"", aname, 0)).qid == point.root_qid
    # ".." from an attached fid stops at the root
    assert walk(s, 100, b"..", b"..", fid=4)[-1] == point.root_qid
    assert s.fid_count() == len(anames) + 1
    s.reset()


def test_auth_not_supported(s: Session) -> None:
    err(errno.EOPNOTSUPP, s.auth, Tauth(1, 5, b"u", b"", 0))


def test_handlers_table(s: Session) -> None:
    T = C.MsgType
    expected = {
        t for t in T if t.name.startswith("T") and t not in (
            T.TVERSION, T.TFLUSH, T.TREAD, T.TLERROR, T.TERROR, T.TOPEN, T.TCREATE, T.TSTAT, T.TWSTAT,
        )
    }
    assert set(s.handlers) == expected
    for t, h in s.handlers.items():
        assert h.__name__ == T(t).name[1:].lower()


# -------------------------------------------------------------------- walk


def test_walk_clone_and_same_fid(s: Session, root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    assert walk(s, 1) == []
    assert s.fid_count() == 2
    qids = walk(s, 1, b"a", b"b", fid=1)  # newfid == fid
    assert [q.path for q in qids] == [(root / "a").stat().st_ino, (root / "a" / "b").stat().st_ino]
    assert s.getattr(Tgetattr(1, 1, C.GETATTR_BASIC)).qid == qids[-1]
    assert s.fid_count() == 2


def test_walk_errors(s: Session, root: Path) -> None:
    (root / "a").mkdir()
    (root / "f").write_text("x")
    err(errno.EBADF, s.walk, Twalk(1, 99, 1, []))
    err(errno.E2BIG, s.walk, Twalk(1, ROOT, 1, [b"a"] * 17))
    err(errno.ENOENT, s.walk, Twalk(1, ROOT, 1, [b"nope"]))
    assert s.fid_count() == 1
    # a later name fails: partial Rwalk, newfid not created
    assert len(walk(s, 1, b"a", b"nope")) == 1
    err(errno.EBADF, s.getattr, Tgetattr(1, 1, 0))
    # ... and not changed when newfid == fid
    walk(s, 2, b"a")
    assert len(walk(s, 2, b"..", b"nope", fid=2)) == 1
    assert s.getattr(Tgetattr(1, 2, 0)).qid.path == (root / "a").stat().st_ino
    # newfid in use
    err(errno.EBADF, s.walk, Twalk(1, ROOT, 2, [b"a"]))
    # through a file
    walk(s, 3, b"f")
    err(errno.ENOTDIR, s.walk, Twalk(1, 3, 4, [b"x"]))
    assert len(walk(s, 4, b"f", b"x")) == 1


@pytest.mark.parametrize("name", [b"", b".", b"a/b", b"/", b"a\0b", b"/etc"])
def test_walk_bad_names(s: Session, root: Path, name: bytes) -> None:
    (root / "a").mkdir()
    (root / "a" / "b").mkdir()
    err(errno.EINVAL, s.walk, Twalk(1, ROOT, 1, [name]))


def test_walk_dotdot_clamped_at_root(s: Session, root: Path) -> None:
    (root / "a").mkdir()
    rq = s.point.root_qid
    assert walk(s, 1, b"..") == [rq]
    assert walk(s, 2, b"..", b"..", b"a", b"..", b"..") == [
        rq, rq, walk(s, 3, b"a")[0], rq, rq,
    ]
    assert s.getattr(Tgetattr(1, 2, 0)).qid == rq
    # the new fid really is the root: listing it shows our file
    lopen(s, 1)
    assert b"a" in [e[3] for e in readdir_all(s, 1)]


def test_walk_symlinks_not_followed(s: Session, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root / "out").symlink_to(outside)
    (root / "abs").symlink_to("/etc")
    q = walk(s, 1, b"out")
    assert q[0].type == C.QidType.SYMLINK
    err(errno.ENOTDIR, s.walk, Twalk(1, 1, 2, [b"secret"]))
    assert len(walk(s, 2, b"out", b"secret")) == 1  # stops at the symlink
    err(errno.ELOOP, s.lopen, Tlopen(1, 1, 0))
    assert s.readlink(Treadlink(1, 1)).target == str(outside).encode()
    err(errno.EINVAL, s.readlink, Treadlink(1, ROOT))
    walk(s, 3, b"abs")
    err(errno.ELOOP, s.lopen, Tlopen(1, 3, 0))
    err(errno.ENODATA, s.xattrwalk, Txattrwalk(1, 3, 4, b"user.x"))


def test_dotdot_after_rename_of_enclosing_dir(s: Session, root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "x").mkdir()
    walk(s, 1, b"a", b"b")
    walk(s, 2, b"a")
    os.rename(root / "a", root / "x" / "a")  # behind the gofer's back
    q = walk(s, 3, b"..", fid=1)[0]
    assert q.path == (root / "x" / "a").stat().st_ino
    qs = walk(s, 4, b"..", b"..", b"..", b"..", b"..", fid=1)
    assert [x.path for x in qs[:3]] == [
        (root / "x" / "a").stat().st_ino, (root / "x").stat().st_ino, root.stat().st_ino,
    ]
    assert qs[3:] == [s.point.root_qid] * 2
    # and through the session's own Trename
    s.renameat(Trenameat(1, ROOT, b"x", ROOT, b"y"))
    walk(s, 5, b"y")
    s.rename(Trename(1, 1, 5, b"bb"))  # a/b -> y/bb
    assert (root / "y" / "bb").is_dir()
    assert walk(s, 6, b"..", fid=1)[0].path == (root / "y").stat().st_ino


def test_dotdot_when_dir_moved_out_of_attached_subtree(point: AttachPoint, root: Path) -> None:
    # A session attached below the root: moving a dir above its aname must not let
    # ".." escape above the attach point's root.
    (root / "sub" / "d").mkdir(parents=True)
    s = Session(point)
    s.attach(Tattach(1, 0, NOFID, b"", b"", 0))
    walk(s, 1, b"sub", b"d")
    qs = walk(s, 2, *([b".."] * 10), fid=1)
    assert qs[-1] == point.root_qid
    s.reset()


def test_directory_moved_out_by_the_host(s: Session, root: Path, tmp_path: Path) -> None:
    """A sandbox cannot move anything out of its tree, but the host can: a fid left in
    a directory moved out must not become a way to go up, list or change outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("f")
    walk(s, 1, b"a", b"b")
    walk(s, 2, b"a", b"b", b"f")
    walk(s, 3, b"a")
    os.rename(root / "a", outside / "a")
    rq = s.point.root_qid
    assert walk(s, 4, b"..", fid=1) == [rq]  # a's parent is outside: clamped
    assert walk(s, 5, b"..", b"..", b"..", fid=1) == [rq] * 3
    lopen(s, 4)
    assert b"secret" not in [e[3] for e in readdir_all(s, 4)]
    err(errno.ENOENT, s.remove, Tremove(1, 3))
    err(errno.ENOENT, s.rename, Trename(1, 2, ROOT, b"stolen"))
    err(errno.ENOENT, s.link, Tlink(1, ROOT, 2, b"stolen"))
    assert sorted(os.listdir(outside)) == ["a", "secret"]
    assert (outside / "a" / "b" / "f").exists() and not (root / "stolen").exists()


def test_max_fids(point: AttachPoint) -> None:
    s = Session(point, max_fids=3)
    s.attach(Tattach(1, 0, NOFID, b"", b"", 0))
    walk(s, 1)
    walk(s, 2)
    err(errno.EMFILE, s.walk, Twalk(1, 0, 3, []))
    walk(s, 2, fid=2)  # replacing an existing fid needs no new slot
    clunk(s, 2)
    walk(s, 3)
    s.reset()


# ---------------------------------------------------------------- getattr


def test_getattr(s: Session, root: Path) -> None:
    f = root / "f"
    f.write_bytes(b"x" * 5000)
    os.utime(f, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    walk(s, 1, b"f")
    r = s.getattr(Tgetattr(9, 1, C.GETATTR_ALL))
    st = f.lstat()
    assert r.tag == 9
    assert r.valid == C.GETATTR_BASIC
    assert r.qid == Qid(0, 0, st.st_ino)
    assert (r.mode, r.uid, r.gid, r.nlink, r.size, r.blocks, r.blksize) == (
        st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size, st.st_blocks, st.st_blksize,
    )
    assert (r.atime_sec, r.atime_nsec) == (1_500_000_000, 123_456_789)
    assert (r.mtime_sec, r.mtime_nsec) == (1_600_000_000, 987_654_321)
    assert r.ctime_sec * 10**9 + r.ctime_nsec == st.st_ctime_ns
    assert s.getattr(Tgetattr(1, 1, C.GETATTR_MODE | C.GETATTR_SIZE)).valid == C.GETATTR_MODE | C.GETATTR_SIZE
    err(errno.EBADF, s.getattr, Tgetattr(1, 42, C.GETATTR_BASIC))


def test_getattr_device_node_rdev(s: Session, root: Path) -> None:
    if not as_root():
        pytest.skip("needs CAP_MKNOD")
    s.mknod(Tmknod(1, ROOT, b"null", stat.S_IFCHR | 0o666, 1, 3, 0))
    walk(s, 1, b"null")
    r = s.getattr(Tgetattr(1, 1, C.GETATTR_BASIC))
    assert stat.S_ISCHR(r.mode)
    assert (os.major(r.rdev), os.minor(r.rdev)) == (1, 3)
    err(errno.EPERM, s.lopen, Tlopen(1, 1, C.L_O_RDONLY))  # host devices are never opened


# ----------------------------------------------------------------- setattr


@pytest.fixture(params=[True, False], ids=["at_empty_path", "fallback"])
def empty_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test with AT_EMPTY_PATH utimensat/fchmodat2, and with the re-open fallbacks
    used on kernels that lack them."""
    from gofer9p.attach import _attrs as sm

    monkeypatch.setitem(sm._empty_path_ok, "utimensat", request.param)
    monkeypatch.setitem(sm._empty_path_ok, "fchmodat2", request.param)
    return bool(request.param)


@pytest.fixture(params=[True, False], ids=["by_handle", "by_name"])
def by_handle(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test re-opening files by file handle, and by name (the fallback used
    without CAP_DAC_READ_SEARCH or file-handle support)."""
    from gofer9p.attach import _reopen as sm

    monkeypatch.setitem(sm._handles_ok, "reopen", request.param)
    return bool(request.param)


def _setattr(s: Session, fid: int, valid: int, **kw: int) -> None:
    args = dict(mode=0, uid=0, gid=0, size=0, atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)
    args.update(kw)
    s.setattr(Tsetattr(1, fid, valid, **args))


def test_setattr_mode_size_times(
    s: Session, root: Path, empty_path: bool, by_handle: bool
) -> None:
    f = root / "f"
    f.write_bytes(b"0123456789")
    walk(s, 1, b"f")
    _setattr(s, 1, C.SETATTR_MODE, mode=stat.S_IFREG | 0o4751)
    assert stat.S_IMODE(f.stat().st_mode) == 0o4751
    _setattr(s, 1, C.SETATTR_SIZE, size=3)
    assert f.read_bytes() == b"012"
    _setattr(s, 1, C.SETATTR_SIZE, size=8)
    assert f.read_bytes() == b"012" + b"\0" * 5
    _setattr(s, 1, C.SETATTR_ATIME | C.SETATTR_ATIME_SET | C.SETATTR_MTIME | C.SETATTR_MTIME_SET,
             atime_sec=1000, atime_nsec=5, mtime_sec=2000, mtime_nsec=7)
    st = f.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 5, 2000 * 10**9 + 7)
    # mtime alone: atime untouched; without _SET means "now"
    _setattr(s, 1, C.SETATTR_MTIME)
    st = f.stat()
    assert st.st_atime_ns == 1000 * 10**9 + 5
    assert st.st_mtime > 2000 + 10**9
    _setattr(s, 1, C.SETATTR_ATIME | C.SETATTR_ATIME_SET, atime_sec=3000, atime_nsec=0)
    st2 = f.stat()
    assert st2.st_atime_ns == 3000 * 10**9 and st2.st_mtime_ns == st.st_mtime_ns
    _setattr(s, 1, C.SETATTR_CTIME)  # alone: no-op, not an error
    err(errno.EINVAL, _setattr, s, 1, C.SETATTR_MTIME | C.SETATTR_MTIME_SET, mtime_nsec=2 * 10**9)


@pytest.mark.parametrize(
    ("ns", "sec", "nsec"),
    [(1_700_000_000_123_456_789, 1_700_000_000, 123_456_789), (0, 0, 0),
     (-1_500_000_000, (1 << 64) - 2, 500_000_000), (-1, (1 << 64) - 1, 999_999_999)],
)
def test_getattr_times_floor_to_seconds_and_nanoseconds(
    s: Session, root: Path, ns: int, sec: int, nsec: int
) -> None:
    """Rgetattr's (sec, nsec) is the stat's time floored: nsec stays in [0, 1e9) for times
    before 1970 too, and sec goes on the wire as its 64-bit two's complement."""
    f = root / "t"
    f.write_bytes(b"")
    os.utime(f, ns=(ns, ns))
    walk(s, 2, b"t")
    r = s.getattr(Tgetattr(1, 2, C.GETATTR_ALL))
    assert (r.atime_sec, r.atime_nsec, r.mtime_sec, r.mtime_nsec) == (sec, nsec, sec, nsec)


def test_setattr_directory_and_symlink(
    s: Session, root: Path, empty_path: bool, by_handle: bool
) -> None:
    (root / "d").mkdir(mode=0o755)
    (root / "l").symlink_to("nowhere")
    walk(s, 1, b"d")
    walk(s, 2, b"l")
    _setattr(s, 1, C.SETATTR_MODE | C.SETATTR_MTIME | C.SETATTR_MTIME_SET, mode=0o700, mtime_sec=77)
    st = (root / "d").stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_mtime == 77
    err(errno.EISDIR, _setattr, s, 1, C.SETATTR_SIZE, size=0)
    # symlink: mode ignored, times on the link itself (never the target)
    _setattr(s, 2, C.SETATTR_MODE | C.SETATTR_MTIME | C.SETATTR_MTIME_SET, mode=0o600, mtime_sec=88)
    assert (root / "l").lstat().st_mtime == 88
    # an open fid: mode and times through its open fd
    (root / "f").write_text("x")
    open_file(s, 3, b"f", C.L_O_RDONLY)
    _setattr(s, 3, C.SETATTR_MODE | C.SETATTR_MTIME | C.SETATTR_MTIME_SET, mode=0o604, mtime_sec=99)
    st = (root / "f").stat()
    assert stat.S_IMODE(st.st_mode) == 0o604 and st.st_mtime == 99
    # a socket: chmod works only where the kernel can do it on the O_PATH fd
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    walk(s, 4, b"sock")
    if empty_path:
        _setattr(s, 4, C.SETATTR_MODE, mode=0o600)
        assert stat.S_IMODE((root / "sock").lstat().st_mode) == 0o600
    else:
        err(errno.EOPNOTSUPP, _setattr, s, 4, C.SETATTR_MODE, mode=0o600)
    err(errno.ENXIO, s.lopen, Tlopen(1, 4, C.L_O_RDONLY))


@needs_root
def test_setattr_owner(s: Session, root: Path) -> None:
    (root / "f").write_text("x")
    (root / "l").symlink_to("f")
    walk(s, 1, b"f")
    walk(s, 2, b"l")
    _setattr(s, 1, C.SETATTR_UID, uid=1234)
    assert ((root / "f").stat().st_uid, (root / "f").stat().st_gid) == (1234, 0)
    _setattr(s, 1, C.SETATTR_GID, gid=4321)
    assert ((root / "f").stat().st_uid, (root / "f").stat().st_gid) == (1234, 4321)
    _setattr(s, 2, C.SETATTR_UID | C.SETATTR_GID, uid=55, gid=66)
    assert ((root / "l").lstat().st_uid, (root / "l").lstat().st_gid) == (55, 66)
    assert (root / "f").stat().st_uid == 1234  # not followed


def test_setattr_size_on_open_and_unlinked_file(s: Session, root: Path, empty_path: bool) -> None:
    (root / "f").write_bytes(b"abcdef")
    open_file(s, 1, b"f", C.L_O_RDWR)
    s.unlinkat(Tunlinkat(1, ROOT, b"f", 0))
    _setattr(s, 1, C.SETATTR_SIZE, size=2)
    assert read(s, 1) == b"ab"
    assert s.getattr(Tgetattr(1, 1, C.GETATTR_BASIC)).nlink == 0


# ------------------------------------------------------------ lopen / read / write


def test_lopen_read_write(s: Session, root: Path) -> None:
    (root / "f").write_bytes(b"hello world")
    open_file(s, 1, b"f")
    assert read(s, 1) == b"hello world"
    assert read(s, 1, 6, 3) == b"wor"
    assert read(s, 1, 100) == b""
    err(errno.EBADF, s.write, Twrite(1, 1, 0, b"x"))
    err(errno.EINVAL, s.lopen, Tlopen(1, 1, 0))  # opened once only
    open_file(s, 2, b"f", C.L_O_WRONLY)
    assert write(s, 2, memoryview(b"HELLO"), 0) == 5  # type: ignore[arg-type]
    err(errno.EBADF, read, s, 2)
    assert (root / "f").read_bytes() == b"HELLO world"
    open_file(s, 3, b"f", C.L_O_WRONLY | C.L_O_APPEND)
    write(s, 3, b"!", 0)
    assert (root / "f").read_bytes() == b"HELLO world!"
    open_file(s, 4, b"f", C.L_O_RDWR | C.L_O_TRUNC)
    assert (root / "f").read_bytes() == b""
    walk(s, 5, b"f")
    err(errno.EBADF, read, s, 5)  # not opened
    err(errno.EBADF, s.write, Twrite(1, 5, 0, b"x"))
    err(errno.EINVAL, s.lopen, Tlopen(1, 5, 3))  # access mode 3


def test_lopen_directory(s: Session, root: Path) -> None:
    (root / "d").mkdir()
    walk(s, 1, b"d")
    err(errno.EISDIR, s.lopen, Tlopen(1, 1, C.L_O_WRONLY))
    err(errno.EISDIR, s.lopen, Tlopen(1, 1, C.L_O_RDWR))
    lopen(s, 1, C.L_O_RDONLY | C.L_O_DIRECTORY)
    err(errno.EISDIR, read, s, 1)
    (root / "f").write_text("x")
    walk(s, 2, b"f")
    err(errno.ENOTDIR, s.lopen, Tlopen(1, 2, C.L_O_DIRECTORY))


def test_open_unlink_read(s: Session, root: Path, by_handle: bool) -> None:
    (root / "f").write_bytes(b"still here")
    open_file(s, 1, b"f")
    walk(s, 2, b"f")
    s.remove(Tremove(1, 2))
    assert not (root / "f").exists()
    assert read(s, 1) == b"still here"
    walk(s, 3, fid=1)  # walking (cloning) an open fid of an unlinked file works
    assert s.getattr(Tgetattr(1, 3, C.GETATTR_BASIC)).nlink == 0
    if by_handle:
        lopen(s, 3)  # the fid still holds the inode: a handle re-opens it
        assert read(s, 3) == b"still here"
    else:
        err(errno.ENOENT, s.lopen, Tlopen(1, 3, 0))  # no name left to re-open it by


def test_lopen_after_rename_behind_our_back(s: Session, root: Path, by_handle: bool) -> None:
    (root / "f").write_bytes(b"data")
    walk(s, 1, b"f")
    os.rename(root / "f", root / "g")
    lopen(s, 1)  # by name: the stale name is found again by inode
    assert read(s, 1) == b"data"
    (root / "d").mkdir()
    walk(s, 2, b"g")
    os.rename(root / "g", root / "d" / "g")  # moved to another directory: gone from ours
    if by_handle:
        lopen(s, 2)
        assert read(s, 2) == b"data"
    else:
        err(errno.ENOENT, s.lopen, Tlopen(1, 2, 0))


def test_device_swapped_in_is_never_opened(s: Session, root: Path, by_handle: bool) -> None:
    """The name of a walked regular file now designates a device node: re-opening the
    fid opens the file itself (by handle) or fails; never the device."""
    if not as_root():
        pytest.skip("needs CAP_MKNOD")
    (root / "f").write_bytes(b"regular")
    os.mknod(root / "dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    walk(s, 1, b"f")
    walk(s, 2, b"f")
    os.rename(root / "f", root / "f.old")
    os.rename(root / "dev", root / "f")
    if by_handle:
        lopen(s, 1)
        assert read(s, 1) == b"regular"
    else:
        lopen(s, 1)  # found again by inode under its new name
        assert read(s, 1) == b"regular"
    err(errno.EPERM, s.lopen, Tlopen(1, walk(s, 3, b"f") and 3, 0))


def test_fifo_open_never_blocks(s: Session, root: Path) -> None:
    os.mkfifo(root / "p")
    open_file(s, 1, b"p", C.L_O_RDONLY)  # would block forever without O_NONBLOCK
    open_file(s, 2, b"p", C.L_O_WRONLY)
    assert write(s, 2, b"through the pipe", 12345) == 16
    assert read(s, 1, 999) == b"through the pipe"


def test_big_offsets(s: Session, root: Path) -> None:
    (root / "f").write_text("x")
    open_file(s, 1, b"f", C.L_O_RDWR)
    err(errno.EINVAL, read, s, 1, 1 << 63)
    err(errno.EINVAL, s.write, Twrite(1, 1, 1 << 64 - 1, b"x"))


# ------------------------------------------------------------------ create


@needs_root
def test_lcreate(s: Session, root: Path) -> None:
    s2 = Session(s.point)
    s2.attach(Tattach(1, 0, NOFID, b"", b"", 1234))
    walk(s2, 1)
    r = s2.lcreate(Tlcreate(3, 1, b"new", C.L_O_RDWR | C.L_O_CREAT | C.L_O_EXCL, 0o100640, 4321))
    st = (root / "new").stat()
    assert r.tag == 3 and r.qid == Qid(0, 0, st.st_ino) and r.iounit == 0
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 4321)
    assert write(s2, 1, b"abc") == 3
    assert read(s2, 1) == b"abc"
    assert s2.getattr(Tgetattr(1, 1, C.GETATTR_BASIC)).qid == r.qid
    # the fid now is the file: clone + readlink-free operations work on it
    walk(s2, 2, fid=1)
    _setattr(s2, 2, C.SETATTR_SIZE, size=1)
    assert (root / "new").read_bytes() == b"a"
    walk(s2, 4)
    err(errno.EEXIST, s2.lcreate, Tlcreate(1, 4, b"new", C.L_O_RDWR, 0o644, 0))
    err(errno.ENOTDIR, s2.lcreate, Tlcreate(1, 2, b"x", C.L_O_RDWR, 0o644, 0))
    err(errno.EINVAL, s2.lcreate, Tlcreate(1, 1, b"x", C.L_O_RDWR, 0o644, 0))  # fid opened
    for bad in (b"", b".", b"..", b"a/b", b"a\0"):
        err(errno.EINVAL, s2.lcreate, Tlcreate(1, 4, bad, C.L_O_RDWR, 0o644, 0))
    (root / "l").symlink_to("/etc/passwd-nope")
    err(errno.EEXIST, s2.lcreate, Tlcreate(1, 4, b"l", C.L_O_RDWR, 0o644, 0))
    s2.reset()


@needs_root
def test_mkdir_mknod_symlink(s: Session, root: Path) -> None:
    s2 = Session(s.point)
    s2.attach(Tattach(1, 0, NOFID, b"", b"", 1234))
    q = s2.mkdir(Tmkdir(1, 0, b"d", 0o40750, 99)).qid
    st = (root / "d").stat()
    assert q == Qid(0x80, 0, st.st_ino)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1234, 99)
    err(errno.EEXIST, s2.mkdir, Tmkdir(1, 0, b"d", 0o755, 0))
    err(errno.EINVAL, s2.mkdir, Tmkdir(1, 0, b"..", 0o755, 0))
    q = s2.mknod(Tmknod(1, 0, b"fifo", stat.S_IFIFO | 0o600, 0, 0, C.NONUNAME)).qid
    st = (root / "fifo").lstat()
    assert stat.S_ISFIFO(st.st_mode) and (st.st_uid, st.st_gid) == (1234, 0)
    s2.mknod(Tmknod(1, 0, b"reg", stat.S_IFREG | 0o644, 0, 0, 5))
    assert (root / "reg").is_file()
    q = s2.symlink(Tsymlink(1, 0, b"sl", b"../../etc/shadow", 7)).qid
    st = (root / "sl").lstat()
    assert q == Qid(0x02, 0, st.st_ino) and (st.st_uid, st.st_gid) == (1234, 7)
    assert os.readlink(root / "sl") == "../../etc/shadow"
    err(errno.EEXIST, s2.symlink, Tsymlink(1, 0, b"sl", b"x", 0))
    err(errno.EINVAL, s2.symlink, Tsymlink(1, 0, b"a/b", b"x", 0))
    walk(s2, 1, b"reg")
    err(errno.ENOTDIR, s2.mkdir, Tmkdir(1, 1, b"x", 0o755, 0))
    s2.reset()


# ------------------------------------------------------------ link / rename / unlink


def test_link(s: Session, root: Path) -> None:
    (root / "f").write_text("x")
    (root / "d").mkdir()
    walk(s, 1, b"f")
    walk(s, 2, b"d")
    s.link(Tlink(1, 2, 1, b"hard"))
    assert (root / "d" / "hard").stat().st_ino == (root / "f").stat().st_ino
    assert (root / "f").stat().st_nlink == 2
    err(errno.EEXIST, s.link, Tlink(1, 2, 1, b"hard"))
    err(errno.EPERM, s.link, Tlink(1, ROOT, 2, b"dirlink"))
    err(errno.EINVAL, s.link, Tlink(1, 2, 1, b".."))
    (root / "l").symlink_to("f")
    walk(s, 3, b"l")
    s.link(Tlink(1, ROOT, 3, b"l2"))  # links the symlink itself
    assert (root / "l2").is_symlink()


def test_rename_updates_fids(s: Session, root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"content")
    (root / "e").mkdir()
    walk(s, 1, b"d", b"f")
    walk(s, 2, b"d", b"f")
    walk(s, 3, b"e")
    s.rename(Trename(1, 1, 3, b"g"))
    assert (root / "e" / "g").read_bytes() == b"content"
    # both fids still name the file: re-open by name works without scanning
    lopen(s, 1)
    lopen(s, 2)
    assert read(s, 2) == b"content"
    walk(s, 4, b"e", b"g")
    s.renameat(Trenameat(1, 3, b"g", ROOT, b"top"))
    walk(s, 5, b"top")
    _setattr(s, 4, C.SETATTR_SIZE, size=3)  # fid 4 followed the renameat
    assert (root / "top").read_bytes() == b"con"
    err(errno.ENOENT, s.renameat, Trenameat(1, ROOT, b"nope", ROOT, b"x"))
    err(errno.EINVAL, s.renameat, Trenameat(1, ROOT, b"top", ROOT, b".."))
    err(errno.EINVAL, s.renameat, Trenameat(1, ROOT, b".", ROOT, b"x"))
    err(errno.EBUSY, s.rename, Trename(1, ROOT, 3, b"root"))
    (root / "e" / "x").mkdir()
    (root / "e" / "x" / "y").write_text("y")
    walk(s, 6, b"e")
    err(errno.ENOTEMPTY, s.renameat, Trenameat(1, ROOT, b"d", 6, b"x"))
    err(errno.EINVAL, s.renameat, Trenameat(1, ROOT, b"e", 6, b"inside"))  # into itself


def test_unlinkat(s: Session, root: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    (root / "f").write_text("x")
    err(errno.EISDIR, s.unlinkat, Tunlinkat(1, ROOT, b"d", 0))
    err(errno.ENOTEMPTY, s.unlinkat, Tunlinkat(1, ROOT, b"d", C.AT_REMOVEDIR))
    err(errno.ENOTDIR, s.unlinkat, Tunlinkat(1, ROOT, b"f", C.AT_REMOVEDIR))
    err(errno.EINVAL, s.unlinkat, Tunlinkat(1, ROOT, b"f", 0x100))
    err(errno.EINVAL, s.unlinkat, Tunlinkat(1, ROOT, b"..", 0))
    err(errno.EINVAL, s.unlinkat, Tunlinkat(1, ROOT, b"d/sub", C.AT_REMOVEDIR))
    err(errno.ENOENT, s.unlinkat, Tunlinkat(1, ROOT, b"nope", 0))
    s.unlinkat(Tunlinkat(1, ROOT, b"f", 0))
    walk(s, 1, b"d")
    s.unlinkat(Tunlinkat(1, 1, b"sub", C.AT_REMOVEDIR))
    assert list(root.iterdir()) == [root / "d"]
    err(errno.EBADF, s.unlinkat, Tunlinkat(1, 77, b"x", 0))


def test_remove_always_clunks(s: Session, root: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    (root / "f").write_text("x")
    walk(s, 1, b"d")
    err(errno.ENOTEMPTY, s.remove, Tremove(1, 1))
    err(errno.EBADF, s.getattr, Tgetattr(1, 1, 0))
    walk(s, 1, b"d", b"sub")
    s.remove(Tremove(1, 1))
    assert not (root / "d" / "sub").exists()
    walk(s, 2, b"f")
    s.remove(Tremove(1, 2))
    assert not (root / "f").exists()
    walk(s, 3)
    err(errno.EBUSY, s.remove, Tremove(1, 3))  # the attach root
    assert s.fid_count() == 1
    err(errno.EBADF, s.remove, Tremove(1, 3))


# ----------------------------------------------------------------- readdir


def test_readdir(s: Session, root: Path) -> None:
    (root / "d").mkdir()
    (root / "f").write_text("x")
    (root / "l").symlink_to("f")
    walk(s, 1)
    err(errno.EBADF, s.readdir, Treaddir(1, 1, 0, 4096))  # not opened
    lopen(s, 1)
    ents = {e[3]: e for e in readdir_all(s, 1)}
    assert set(ents) == {b".", b"..", b"d", b"f", b"l"}
    rq = s.point.root_qid
    assert ents[b"."][0] == rq and ents[b".."][0] == rq  # ".." of the root is the root
    assert ents[b"d"][0] == Qid(0x80, 0, (root / "d").stat().st_ino) and ents[b"d"][2] == C.DT_DIR
    assert ents[b"f"][0] == Qid(0, 0, (root / "f").stat().st_ino) and ents[b"f"][2] == C.DT_REG
    assert ents[b"l"][0].type == 0x02 and ents[b"l"][2] == C.DT_LNK
    # not the root: ".." is the real parent
    walk(s, 2, b"d")
    lopen(s, 2)
    sub = {e[3]: e for e in readdir_all(s, 2)}
    assert set(sub) == {b".", b".."} and sub[b".."][0].path == root.stat().st_ino
    walk(s, 3, b"f")
    err(errno.ENOTDIR, s.readdir, Treaddir(1, 3, 0, 4096))
    lopen(s, 3)
    err(errno.ENOTDIR, s.readdir, Treaddir(1, 3, 0, 4096))
    # too small for a single entry: EINVAL, never a false end of directory
    err(errno.EINVAL, s.readdir, Treaddir(1, 1, 0, 10))


def test_readdir_small_counts_and_msize(s: Session, root: Path) -> None:
    names = {b"entry%03d" % i for i in range(200)}
    for n in names:
        (root / n.decode()).write_text("")
    walk(s, 1)
    lopen(s, 1)
    for count in (32, 33, 100, 1000):
        got = [e[3] for e in readdir_all(s, 1, count)]
        assert len(got) == len(set(got)) == 202
        assert set(got) - {b".", b".."} == names
    s.set_msize(24 + 64)  # readdir counts are clamped to msize - 24
    data = s.readdir(Treaddir(1, 1, 0, 1 << 20)).data
    assert 0 < len(data) <= 64
    s.set_msize(4 << 20)


def test_readdir_cookies_survive_changes(s: Session, root: Path) -> None:
    """Every entry present from start to end is returned exactly once, while
    entries are created and removed between Treaddir calls."""
    stable = {b"s%04d" % i for i in range(300)}
    doomed = [b"d%04d" % i for i in range(300)]
    for n in [*stable, *doomed]:
        (root / n.decode()).write_text("")
    walk(s, 1)
    lopen(s, 1)
    seen: list[bytes] = []
    off = 0
    i = 0
    while True:
        ents = dirents(s.readdir(Treaddir(1, 1, off, 400)).data)
        if not ents:
            break
        seen += [e[3] for e in ents]
        off = ents[-1][1]
        for _ in range(5):  # churn between calls
            if doomed:
                os.unlink(root / doomed.pop().decode())
            (root / f"new{i:05d}").write_text("")
            i += 1
    assert i > 5
    got = [n for n in seen if n in stable]
    assert len(got) == len(set(got)) == len(stable)
    assert len(seen) == len(set(seen))


def test_readdir_resume_with_second_fid(s: Session, root: Path) -> None:
    for i in range(50):
        (root / f"f{i:02d}").write_text("")
    walk(s, 1)
    lopen(s, 1)
    first = dirents(s.readdir(Treaddir(1, 1, 0, 300)).data)
    walk(s, 2)
    lopen(s, 2)
    rest = readdir_all(s, 2)
    # a cookie from one open is valid for another open of the same directory
    off = first[-1][1]
    tail = [e[3] for e in dirents(s.readdir(Treaddir(1, 2, off, 1 << 16)).data)]
    assert [e[3] for e in rest] == [e[3] for e in first] + tail


# -------------------------------------------------------------------- xattr


def _user_xattrs_work(path: Path) -> bool:
    p = path / ".xattr-probe"
    p.write_text("")
    try:
        os.setxattr(p, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        p.unlink()


def test_xattrs(s: Session, root: Path) -> None:
    if not _user_xattrs_work(root):
        pytest.skip("no user xattrs on this file system")
    (root / "f").write_text("x")
    os.setxattr(root / "f", "user.a", b"alpha")
    walk(s, 1, b"f")
    r = s.xattrwalk(Txattrwalk(1, 1, 2, b"user.a"))
    assert r.size == 5
    assert read(s, 2) == b"alpha"
    assert read(s, 2, 3) == b"ha"
    err(errno.EBADF, s.walk, Twalk(1, 2, 3, []))
    clunk(s, 2)
    r = s.xattrwalk(Txattrwalk(1, 1, 2, b""))
    assert read(s, 2).split(b"\0")[:-1] == [b"user.a"] and r.size == len(b"user.a\0")
    clunk(s, 2)
    err(errno.ENODATA, s.xattrwalk, Txattrwalk(1, 1, 2, b"user.nope"))
    assert s.fid_count() == 2
    # set: xattrcreate + writes + clunk
    walk(s, 3, fid=1)
    s.xattrcreate(Txattrcreate(1, 3, b"user.b", 6, 0))
    assert write(s, 3, b"bet", 0) == 3
    assert write(s, 3, b"a!!", 3) == 3
    err(errno.ERANGE, s.write, Twrite(1, 3, 5, b"xx"))
    clunk(s, 3)
    assert os.getxattr(root / "f", "user.b") == b"beta!!"
    # XATTR_CREATE on an existing name: the commit's error comes from Tclunk
    walk(s, 3, fid=1)
    s.xattrcreate(Txattrcreate(1, 3, b"user.b", 1, C.XATTR_CREATE))
    write(s, 3, b"z")
    err(errno.EEXIST, clunk, s, 3)
    assert s.fid_count() == 2  # freed anyway
    # short write: EINVAL on commit
    walk(s, 3, fid=1)
    s.xattrcreate(Txattrcreate(1, 3, b"user.c", 4, 0))
    write(s, 3, b"ab")
    err(errno.EINVAL, clunk, s, 3)
    # size 0 removes (what Linux v9fs sends for removexattr)
    walk(s, 3, fid=1)
    s.xattrcreate(Txattrcreate(1, 3, b"user.a", 0, C.XATTR_REPLACE))
    clunk(s, 3)
    assert "user.a" not in os.listxattr(root / "f")
    walk(s, 3, fid=1)
    s.xattrcreate(Txattrcreate(1, 3, b"user.a", 0, C.XATTR_REPLACE))
    err(errno.ENODATA, clunk, s, 3)
    err(errno.E2BIG, s.xattrcreate, Txattrcreate(1, 1, b"user.big", 65537, 0))
    err(errno.EINVAL, s.xattrcreate, Txattrcreate(1, 1, b"user.x", 1, 3))
    err(errno.EINVAL, s.xattrcreate, Txattrcreate(1, 1, b"", 1, 0))
    # an opened fid turned into an xattr fid never writes the file
    open_file(s, 5, b"f", C.L_O_RDWR)
    s.xattrcreate(Txattrcreate(1, 5, b"user.o", 2, 0))
    write(s, 5, b"OO")
    err(errno.EBADF, read, s, 5)
    err(errno.EBADF, s.fsync, Tfsync(1, 5, 0))
    clunk(s, 5)
    assert (root / "f").read_text() == "x" and os.getxattr(root / "f", "user.o") == b"OO"
    # only the user namespace is served
    err(errno.EOPNOTSUPP, s.xattrcreate, Txattrcreate(1, 1, b"security.capability", 1, 0))
    err(errno.EOPNOTSUPP, s.xattrcreate, Txattrcreate(1, 1, b"trusted.overlay.redirect", 1, 0))
    err(errno.EOPNOTSUPP, s.xattrwalk, Txattrwalk(1, 1, 9, b"security.selinux"))
    if as_root():
        os.setxattr(root / "f", "trusted.hidden", b"host")
        s.xattrwalk(Txattrwalk(1, 1, 9, b""))
        assert b"trusted" not in read(s, 9)
        clunk(s, 9)
    # directories, via the root fid
    walk(s, 4)
    s.xattrcreate(Txattrcreate(1, 4, b"user.dir", 2, 0))
    write(s, 4, b"ok")
    clunk(s, 4)
    assert os.getxattr(root, "user.dir") == b"ok"


def test_xattr_symlink_has_none(s: Session, root: Path) -> None:
    (root / "l").symlink_to("x")
    walk(s, 1, b"l")
    assert s.xattrwalk(Txattrwalk(1, 1, 2, b"")).size == 0
    err(errno.ENODATA, s.xattrwalk, Txattrwalk(1, 1, 3, b"user.x"))


# -------------------------------------------------------------------- locks


def _lock(
    s: Session, fid: int, ltype: int, start: int = 0, length: int = 0, flags: int = 0,
    owner: int = 42,
) -> int:
    return s.lock(Tlock(1, fid, ltype, flags, start, length, owner, b"client")).status


def _getlock(s: Session, fid: int, ltype: int, start: int, length: int, owner: int) -> Any:
    return s.getlock(Tgetlock(1, fid, ltype, start, length, owner, b"client"))


def test_locks_conflict_between_fids(s: Session, root: Path) -> None:
    (root / "f").write_bytes(b"x" * 100)
    open_file(s, 1, b"f", C.L_O_RDWR)
    open_file(s, 2, b"f", C.L_O_RDWR)
    assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 0, 10) == C.LOCK_SUCCESS
    # another open of the file conflicts, whatever the owner (OFD locks)
    assert _lock(s, 2, C.LOCK_TYPE_WRLCK, 5, 10) == C.LOCK_BLOCKED
    assert _lock(s, 2, C.LOCK_TYPE_RDLCK, 5, 10, C.LOCK_FLAGS_BLOCK, owner=200) == C.LOCK_BLOCKED
    assert _lock(s, 2, C.LOCK_TYPE_WRLCK, 10, 10) == C.LOCK_SUCCESS  # no overlap
    g = _getlock(s, 2, C.LOCK_TYPE_WRLCK, 0, 0, 42)
    assert (g.type, g.start, g.length) == (C.LOCK_TYPE_WRLCK, 0, 10)
    g = _getlock(s, 1, C.LOCK_TYPE_RDLCK, 50, 5, 42)
    assert (g.type, g.start, g.length, g.proc_id, g.client_id) == (C.LOCK_TYPE_UNLCK, 50, 5, 42, b"client")
    assert _getlock(s, 1, C.LOCK_TYPE_WRLCK, 0, 10, 42).type == C.LOCK_TYPE_UNLCK  # its own
    assert _lock(s, 1, C.LOCK_TYPE_UNLCK, 0, 10) == C.LOCK_SUCCESS
    assert _lock(s, 2, C.LOCK_TYPE_WRLCK, 5, 0) == C.LOCK_SUCCESS  # to EOF
    # clunking the holder releases its locks
    clunk(s, 2)
    assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 0, 0) == C.LOCK_SUCCESS
    # read lock needs a readable fid, write lock a writable one (as fcntl)
    open_file(s, 3, b"f", C.L_O_RDONLY)
    err(errno.EBADF, _lock, s, 3, C.LOCK_TYPE_WRLCK, 200, 1)
    open_file(s, 5, b"f", C.L_O_WRONLY)
    err(errno.EBADF, _lock, s, 5, C.LOCK_TYPE_RDLCK, 200, 1)
    walk(s, 4, b"f")
    err(errno.EBADF, _lock, s, 4, C.LOCK_TYPE_RDLCK)
    err(errno.EBADF, _getlock, s, 4, C.LOCK_TYPE_RDLCK, 0, 0, 42)
    err(errno.EINVAL, _lock, s, 1, 7)
    err(errno.EINVAL, _lock, s, 1, C.LOCK_TYPE_RDLCK, 1 << 63)
    err(errno.EINVAL, _getlock, s, 1, 7, 0, 0, 42)
    # what Linux v9fs sends (type UNLCK: "any conflicting lock?")
    _lock(s, 1, C.LOCK_TYPE_RDLCK, 0, 0)
    g = _getlock(s, 5, C.LOCK_TYPE_UNLCK, 10, 20, 43)
    assert (g.type, g.start, g.length) == (C.LOCK_TYPE_RDLCK, 0, 0)
    _lock(s, 1, C.LOCK_TYPE_UNLCK, 0, 0)
    assert _getlock(s, 5, C.LOCK_TYPE_UNLCK, 10, 20, 43).type == C.LOCK_TYPE_UNLCK


def test_lock_ranges_per_session_are_capped(
    s: Session, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracked lock ranges are capped per session (memory), checked before the host lock
    is taken or released: ENOLCK, no untracked host lock; unlocking frees the count."""
    import gofer9p.attach._locks as sess

    monkeypatch.setattr(sess, "MAX_SESSION_LOCK_RANGES", 10)
    (root / "f").write_bytes(b"x" * 100)
    open_file(s, 1, b"f", C.L_O_RDWR)
    open_file(s, 2, b"f", C.L_O_RDWR)
    for i in range(6):
        assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 2 * i, 1, owner=1) == C.LOCK_SUCCESS
    for i in range(4):
        assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 50 + 2 * i, 1, owner=2) == C.LOCK_SUCCESS
    err(errno.ENOLCK, _lock, s, 1, C.LOCK_TYPE_WRLCK, 70, 1, owner=2)
    assert _getlock(s, 2, C.LOCK_TYPE_WRLCK, 70, 1, 9).type == C.LOCK_TYPE_UNLCK  # not taken
    # merging into a held range adds nothing
    assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 0, 3, owner=1) == C.LOCK_SUCCESS
    # an unlock that would split a range past the cap is refused before the host unlock
    assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 20, 10, owner=1) == C.LOCK_SUCCESS
    err(errno.ENOLCK, _lock, s, 1, C.LOCK_TYPE_UNLCK, 24, 1, owner=1)
    assert _getlock(s, 2, C.LOCK_TYPE_WRLCK, 24, 1, 9).type == C.LOCK_TYPE_WRLCK  # still held
    clunk(s, 1)
    for i in range(10):
        assert _lock(s, 2, C.LOCK_TYPE_WRLCK, 200 + 2 * i, 1, owner=3) == C.LOCK_SUCCESS


def test_lock_owners_sharing_one_fid(s: Session, root: Path) -> None:
    """A forked child shares the open file (one fid) but not its parent's locks: one
    owner's unlock must not drop the other's lock on the host."""
    (root / "f").write_bytes(b"x" * 100)
    open_file(s, 1, b"f", C.L_O_RDWR)
    open_file(s, 2, b"f", C.L_O_RDWR)
    parent, child = 100, 200
    base = fd_count()
    assert _lock(s, 1, C.LOCK_TYPE_RDLCK, 0, 10, owner=parent) == C.LOCK_SUCCESS
    assert _lock(s, 1, C.LOCK_TYPE_RDLCK, 0, 10, owner=child) == C.LOCK_SUCCESS
    assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 50, 1, owner=child) == C.LOCK_SUCCESS
    assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 50, 1, owner=parent) == C.LOCK_BLOCKED
    assert fd_count() == base + 1  # the second owner has a description of its own
    assert _lock(s, 1, C.LOCK_TYPE_UNLCK, 0, 0, owner=parent) == C.LOCK_SUCCESS
    assert _lock(s, 2, C.LOCK_TYPE_WRLCK, 0, 10) == C.LOCK_BLOCKED  # the child still reads
    assert _getlock(s, 1, C.LOCK_TYPE_WRLCK, 0, 0, parent).type != C.LOCK_TYPE_UNLCK
    assert _getlock(s, 1, C.LOCK_TYPE_WRLCK, 0, 0, child).type == C.LOCK_TYPE_UNLCK
    # piecewise unlock of exactly what is held releases the description
    assert _lock(s, 1, C.LOCK_TYPE_UNLCK, 0, 10, owner=child) == C.LOCK_SUCCESS
    assert fd_count() == base + 1
    assert _lock(s, 1, C.LOCK_TYPE_UNLCK, 50, 1, owner=child) == C.LOCK_SUCCESS
    assert fd_count() == base
    assert _lock(s, 2, C.LOCK_TYPE_WRLCK, 0, 0) == C.LOCK_SUCCESS
    assert _lock(s, 1, C.LOCK_TYPE_UNLCK, 0, 0, owner=99) == C.LOCK_SUCCESS  # held nothing


def test_lock_descriptions_released(s: Session, root: Path) -> None:
    (root / "f").write_bytes(b"x" * 100)
    open_file(s, 1, b"f", C.L_O_RDWR)
    open_file(s, 2, b"f", C.L_O_RDWR)
    base = fd_count()
    for owner in range(10):
        assert _lock(s, 1, C.LOCK_TYPE_RDLCK, owner, 1, owner=owner) == C.LOCK_SUCCESS
    assert fd_count() == base + 9
    # a failed (conflicting) first lock of a new owner leaves nothing behind
    assert _lock(s, 2, C.LOCK_TYPE_WRLCK, 0, 1) == C.LOCK_BLOCKED
    assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 0, 1, owner=77) == C.LOCK_BLOCKED
    assert fd_count() == base + 9
    # clunk releases every description (and lock) of the fid
    clunk(s, 1)
    assert fd_count() == base - 2  # and the fid's own two (O_PATH, open; the parent is shared)
    assert _lock(s, 2, C.LOCK_TYPE_WRLCK, 0, 0) == C.LOCK_SUCCESS
    # and so does reset
    walk(s, 3, b"f")
    lopen(s, 3, C.L_O_RDWR)
    for owner in range(3):
        _lock(s, 3, C.LOCK_TYPE_RDLCK, 50, 1, owner=owner)
    s.reset()
    s.attach(Tattach(1, ROOT, NOFID, b"", b"", 0))
    open_file(s, 1, b"f", C.L_O_RDWR)
    assert _lock(s, 1, C.LOCK_TYPE_WRLCK, 0, 0) == C.LOCK_SUCCESS


def test_lock_ranges() -> None:
    from gofer9p.attach._locks import _ranges_add, _ranges_sub

    r = _ranges_add([], 10, 20)
    r = _ranges_add(r, 30, 40)
    assert r == [(10, 20), (30, 40)]
    assert _ranges_add(r, 20, 30) == [(10, 40)]
    assert _ranges_sub(r, 15, 35) == [(10, 15), (35, 40)]
    assert _ranges_sub(r, 0, 1 << 64) == []
    assert _ranges_sub(r, 12, 13) == [(10, 12), (13, 20), (30, 40)]


# ------------------------------------------------------------ statfs / fsync


def test_statfs_and_fsync(s: Session, root: Path) -> None:
    r = s.statfs(Tstatfs(1, ROOT))
    v = os.statvfs(root)
    assert r.type == 0x01021997 and r.namelen == v.f_namemax and r.blocks == v.f_blocks
    assert r.bsize == v.f_frsize
    (root / "f").write_text("x")
    walk(s, 1, b"f")
    err(errno.EBADF, s.fsync, Tfsync(1, 1, 0))
    lopen(s, 1, C.L_O_WRONLY)
    s.fsync(Tfsync(1, 1, 0))
    s.fsync(Tfsync(1, 1, 1))


# --------------------------------------------------------------- read-only


def _mutations() -> list[Message]:
    """A request of every mutating type (Tsetattr SIZE and Tlopen O_TRUNC would
    go to a worker thread on a read-write point); fid 1 is the root, 2 a file."""
    return [
        Tlcreate(1, 1, b"n", C.L_O_RDWR, 0o644, 0),
        Tmkdir(1, 1, b"n", 0o755, 0),
        Tmknod(1, 1, b"n", stat.S_IFIFO | 0o644, 0, 0, 0),
        Tsymlink(1, 1, b"n", b"t", 0),
        Tlink(1, 1, 2, b"n"),
        Trename(1, 2, 1, b"n"),
        Trenameat(1, 1, b"f", 1, b"n"),
        Tunlinkat(1, 1, b"f", 0),
        Tsetattr(1, 2, C.SETATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0),
        Twrite(1, 2, 0, b"x"),
        Txattrcreate(1, 2, b"user.x", 1, 0),
        Tlopen(1, 2, C.L_O_WRONLY),
        Tlopen(1, 2, C.L_O_RDONLY | C.L_O_TRUNC),
    ]


# The read-only policy is the connection core's (gofer9p.connection), so these
# tests send their requests through a core over a Session of the point.


def test_read_only_point(root: Path) -> None:
    (root / "f").write_text("keep")
    p = AttachPoint.open(str(root), readonly=True)
    peer = serving(p, 1)
    s = peer.core.session
    peer.call(Twalk(1, 1, 2, [b"f"]))
    before = sorted(os.listdir(root))
    for m in _mutations():
        refused(peer, errno.EROFS, m)
    refused(peer, errno.EROFS, Tremove(1, 2))
    assert s.fid_count() == 1  # remove clunked anyway
    assert sorted(os.listdir(root)) == before and (root / "f").read_text() == "keep"
    # reading is fine
    assert isinstance(peer.call(Twalk(1, 1, 2, [b"f"])), Rwalk)
    assert isinstance(peer.call(Tlopen(1, 2, C.L_O_RDONLY)), Rlopen)
    r = peer.call(Tread(1, 2, 0, 4096))
    assert isinstance(r, Rread) and bytes(r.data) == b"keep"
    r = peer.call(Tgetattr(1, 2, C.GETATTR_BASIC))
    assert isinstance(r, Rgetattr) and r.size == 4
    s.reset()
    p.close()


def test_panic_on_write(root: Path) -> None:
    (root / "f").write_text("keep")
    p = AttachPoint.open(str(root), readonly=True, panic_on_write=True)
    reasons = fake_panic(p)
    peer = serving(p, 1)
    peer.call(Twalk(1, 1, 2, [b"f"]))
    for m in _mutations():
        with pytest.raises(Panicked):
            peer.feed(encode(m))
    with pytest.raises(Panicked):
        peer.feed(encode(Tremove(1, 2)))
    assert len(reasons) == len(_mutations()) + 1
    assert all("read-only" in r for r in reasons)
    assert (root / "f").read_text() == "keep"
    # a panic that returns (it never does for real) still refuses the request
    p.panic = reasons.append  # type: ignore[method-assign,assignment]
    refused(peer, errno.EROFS, Tmkdir(1, 1, b"n", 0o755, 0))
    peer.core.session.reset()
    p.close()


def test_read_write_point_ignores_panic_flag(root: Path) -> None:
    p = AttachPoint.open(str(root), panic_on_write=True)
    p.panic = None  # type: ignore[assignment]
    s = Session(p)
    s.attach(Tattach(1, 1, NOFID, b"", b"", 0))
    s.mkdir(Tmkdir(1, 1, b"n", 0o755, 0))
    assert (root / "n").is_dir()
    s.reset()
    p.close()


# ------------------------------------------------------ lifetime / concurrency


def test_fds_are_closed(point: AttachPoint, root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f").write_text("x")
    s = Session(point)
    s.attach(Tattach(1, 0, NOFID, b"", b"", 0))
    open_file(s, 99, b"d/f")  # the point caches one fd per file system for handles
    clunk(s, 99)
    base = fd_count() - 1  # the attach fid
    for i in range(1, 50):
        walk(s, i, b"d", b"f")
        lopen(s, i)
    walk(s, 50, b"d")
    lopen(s, 50)
    readdir_all(s, 50)
    s.xattrwalk(Txattrwalk(1, 50, 51, b""))
    assert fd_count() > base + 50
    for i in range(1, 10):
        clunk(s, i)
    s.reset()
    assert fd_count() == base
    assert s.fid_count() == 0


def test_clunk_during_inflight_operation_defers_close(s: Session, root: Path) -> None:
    (root / "f").write_bytes(b"abc")
    open_file(s, 1, b"f")
    with s.backend._ref(1) as f:  # what a worker thread's read holds
        clunk(s, 1)
        err(errno.EBADF, read, s, 1)
        assert os.pread(f.ofd, 3, 0) == b"abc"  # fds still valid while in use
        ofd = f.ofd
    assert f.ofd == -1
    err(errno.EBADF, os.fstat, ofd)


def test_concurrent_reads_and_clunks(s: Session, root: Path) -> None:
    (root / "f").write_bytes(b"z" * 65536)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(fid: int) -> None:
        buf = bytearray(65536)
        while not stop.is_set():
            try:
                n = s.read_into(fid, 0, memoryview(buf))
                assert n == 65536 and buf[n - 1] == ord("z")
            except OSError as e:
                if e.errno != errno.EBADF:
                    errors.append(e)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

    threads = [threading.Thread(target=reader, args=(100 + i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            for i in range(4):
                open_file(s, 100 + i, b"f")
            for i in range(4):
                clunk(s, 100 + i)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors


def test_is_blocking() -> None:
    assert is_blocking(Tfsync(1, 1, 0))
    assert is_blocking(Twrite(1, 1, 0, b"x" * (1 << 20)))
    assert not is_blocking(Twrite(1, 1, 0, b"x" * 100))
    assert is_blocking(Tread(1, 1, 0, 1 << 20))
    assert not is_blocking(Tread(1, 1, 0, 4096))
    assert not is_blocking(Tgetattr(1, 1, C.GETATTR_BASIC))
    assert is_blocking(Tsetattr(1, 1, C.SETATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0))
    assert not is_blocking(Tlock(1, 1, 1, C.LOCK_FLAGS_BLOCK, 0, 0, 1, b""))
    assert Session.is_blocking(Tfsync(1, 1, 0))


def test_qid_paths_unique_and_stable(point: AttachPoint) -> None:
    a = point.qid_path(1, 5)
    assert point.qid_path(1, 5) == a
    b = point.qid_path(2, 5)
    assert b != a and b >> 56 != a >> 56
    big = point.qid_path(1, 1 << 60)
    assert big >> 56 == 0xFF and point.qid_path(1, 1 << 60) == big
    assert point.qid_path(2, 1 << 60) != big


def test_read_blocks(s: Session, root: Path) -> None:
    (root / "f").write_text("x")
    os.mkfifo(root / "p")
    open_file(s, 1, b"f")
    open_file(s, 2, b"p")
    walk(s, 3, b"p")
    assert not s.read_blocks(1)
    assert s.read_blocks(2)  # FIFO: up to another process, keep it off the event loop
    assert not s.read_blocks(3)  # not opened: fails at once
    assert not s.read_blocks(99)
    assert not s.read_blocks(ROOT)


def test_xattr_buffers_are_bounded_per_session(s: Session, root: Path) -> None:
    """Uncommitted xattr fids cannot pin more than XATTR_SESSION_MAX bytes: past it
    Txattrcreate is ENOMEM; clunking the fids gives the budget back."""
    from gofer9p.attach.session import XATTR_MAX, XATTR_SESSION_MAX
    from gofer9p.protocol.messages import Txattrcreate

    (root / "f").write_bytes(b"x")
    per = XATTR_SESSION_MAX // XATTR_MAX
    for i in range(per):
        walk(s, 100 + i, b"f")
        s.xattrcreate(Txattrcreate(1, 100 + i, b"user.a", XATTR_MAX, 0))
    walk(s, 99, b"f")
    err(errno.ENOMEM, s.xattrcreate, Txattrcreate(1, 99, b"user.a", XATTR_MAX, 0))
    for i in range(per):
        with pytest.raises(OSError):  # never filled: the commit at clunk is EINVAL
            s.clunk(Tclunk(1, 100 + i))
    s.xattrcreate(Txattrcreate(1, 99, b"user.a", XATTR_MAX, 0))


def test_zero_byte_read_of_an_opened_directory_is_eisdir(s: Session, root: Path) -> None:
    """Found by the fuzzer: preadv of 0 bytes on a directory succeeds on the host, but a
    Tread of an opened directory is EISDIR whatever its count (Treaddir is the way)."""
    (root / "d").mkdir()
    walk(s, 1, b"d")
    lopen(s, 1)
    err(errno.EISDIR, s.read_into, 1, 0, memoryview(bytearray(0)))
    err(errno.EISDIR, s.read_into, 1, 0, memoryview(bytearray(16)))


def test_lcreate_undone_when_the_fid_changes_meanwhile(s: Session, root: Path) -> None:
    """The fid is checked again under the lock after the file exists; if another
    request changed it in between (here: simulated when the lock is taken), the
    answer is EINVAL and the file just created is removed, not left behind."""
    s.walk(Twalk(1, ROOT, 10, []))
    b = s.backend
    real = b._lock
    fid = b._fids[10]

    class Meddling:
        def __enter__(self) -> None:
            real.__enter__()
            if (root / "new").exists():  # the create happened: now "someone" opens the fid
                fid.ofd = 99_999

        def __exit__(self, *exc: object) -> None:
            real.__exit__(*exc)

    b._lock = Meddling()
    try:
        with pytest.raises(OSError) as e:
            s.lcreate(Tlcreate(1, 10, b"new", C.L_O_RDWR, 0o644, 0))
    finally:
        b._lock = real
        fid.ofd = -1
    assert e.value.errno == errno.EINVAL
    assert not (root / "new").exists()
