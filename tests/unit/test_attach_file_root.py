"""Unit tests of a Session on an attach point whose root is a regular file.

OCI bundles bind-mount single files (``/etc/hosts``, ``/etc/resolv.conf``);
each is a 9P mount of its own whose root is the file itself, as in gVisor.
The root behaves as a non-directory root: no walk below it, no listing, no
creation in it, ``..`` stays there, and it can never be removed or renamed
(EBUSY, as for a mount point).  Everything that acts on the file itself
works, including the operations that re-open it by name in its directory,
which lies outside the served tree: that directory is trusted for the root
fid only, and the name is checked to still be the root's inode (ESTALE), so
a host-side swap of the entry never redirects a read or a mutation.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from corepeer import Panicked, Peer, fake_panic, refused, serving
from sessionops import clunk, err, lopen, read, walk, write

from gofer9p.attach import AttachPoint, Session, _attrs, _reopen
from gofer9p.protocol import constants as C
from gofer9p.protocol.codec import encode
from gofer9p.protocol.messages import (
    Message,
    Qid,
    Rclunk,
    Rlopen,
    Rread,
    Rwalk,
    Tattach,
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
CONTENT = b"127.0.0.1 localhost\n"


@pytest.fixture(autouse=True)
def _umask0() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """The directory holding the served file (on the host: outside the served tree)."""
    d = tmp_path / "etc"
    d.mkdir()
    (d / "secret").write_text("host secret\n")
    (d / "hosts").write_bytes(CONTENT)
    return d


@pytest.fixture
def hosts(host: Path) -> Path:
    return host / "hosts"


@pytest.fixture
def point(hosts: Path) -> Iterator[AttachPoint]:
    p = AttachPoint.open(str(hosts))
    yield p
    p.close()


@pytest.fixture
def s(point: AttachPoint) -> Iterator[Session]:
    sess = Session(point)
    sess.attach(Tattach(1, ROOT, NOFID, b"", b"", 0))
    yield sess
    sess.reset()


@pytest.fixture(params=[True, False], ids=["by_handle", "by_name"])
def by_handle(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Re-open by file handle, and by name in the root's directory (the daemon's
    way: its seccomp filter refuses file handles)."""
    monkeypatch.setitem(_reopen._handles_ok, "reopen", request.param)
    return bool(request.param)


@pytest.fixture(params=[True, False], ids=["at_empty_path", "fallback"])
def empty_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """utimensat/fchmodat2 with AT_EMPTY_PATH, and the by-name fallbacks of older kernels."""
    monkeypatch.setitem(_attrs._empty_path_ok, "utimensat", request.param)
    monkeypatch.setitem(_attrs._empty_path_ok, "fchmodat2", request.param)
    return bool(request.param)


def _setattr(s: Session, fid: int, valid: int, **kw: int) -> None:
    args = dict(mode=0, uid=0, gid=0, size=0, atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)
    args.update(kw)
    s.setattr(Tsetattr(1, fid, valid, **args))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ----------------------------------------------------------- the attach point


def test_point_holds_file_parent_and_name(point: AttachPoint, host: Path, hosts: Path) -> None:
    st = hosts.stat()
    assert point.root_fmt == stat.S_IFREG
    assert point.root_qid == Qid(0, 0, st.st_ino)
    assert point.name == b"hosts"
    assert os.fstat(point.parent_fd).st_ino == host.stat().st_ino
    assert os.fstat(point.fd).st_ino == st.st_ino


def test_directory_point_has_no_parent(tmp_path: Path) -> None:
    p = AttachPoint.open(str(tmp_path))
    try:
        assert (p.root_fmt, p.parent_fd, p.name, p.root_qid.type) == (stat.S_IFDIR, -1, b"", 0x80)
    finally:
        p.close()


def test_point_via_symlink_uses_the_real_parent(tmp_path: Path, hosts: Path) -> None:
    """The path is trusted configuration: a symlink in it is followed, and the root's
    directory and name are the real ones (where re-opens must look)."""
    (tmp_path / "link").symlink_to(hosts)
    p = AttachPoint.open(str(tmp_path / "link"))
    try:
        assert p.name == b"hosts"
        assert os.fstat(p.parent_fd).st_ino == hosts.parent.stat().st_ino
        s = Session(p)
        s.attach(Tattach(1, ROOT, NOFID, b"", b"", 0))
        walk(s, 1)
        lopen(s, 1)
        assert read(s, 1) == CONTENT
        s.reset()
    finally:
        p.close()


def test_point_refuses_special_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as ei:
        AttachPoint.open(str(fifo))
    assert ei.value.errno == errno.EINVAL and "FIFO" in str(ei.value)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(OSError) as ei:
            AttachPoint.open(str(tmp_path / "sock"))
        assert ei.value.errno == errno.EINVAL and "socket" in str(ei.value)
    finally:
        sock.close()
    with pytest.raises(OSError) as ei:
        AttachPoint.open("/dev/null")
    assert ei.value.errno == errno.EINVAL and "character device" in str(ei.value)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OSError) as ei:
        AttachPoint.open(str(tmp_path / "dangling"))
    assert ei.value.errno == errno.ENOENT


def test_point_constructor_checks_the_name(tmp_path: Path, hosts: Path) -> None:
    """A file root without its directory and name, or whose name is another inode, is refused."""
    fd = os.open(hosts, os.O_PATH)
    pfd = os.open(hosts.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as ei:
            AttachPoint(str(hosts), fd, readonly=False, panic_on_write=False)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(OSError) as ei:
            AttachPoint(str(hosts), fd, readonly=False, panic_on_write=False,
                        parent_fd=pfd, name=b"secret")
        assert ei.value.errno == errno.ESTALE
    finally:
        os.close(fd)
        os.close(pfd)


def test_point_of_a_pseudo_file_is_refused() -> None:
    with pytest.raises(OSError) as ei:
        AttachPoint.open("/proc/self/status")
    assert ei.value.errno == errno.EACCES


def test_point_close_releases_both_fds(hosts: Path) -> None:
    before = fd_count()
    p = AttachPoint.open(str(hosts))
    assert fd_count() == before + 2
    p.close()
    p.close()  # twice: harmless
    assert fd_count() == before


# ------------------------------------------------------------------ attach/walk


def test_attach_gives_a_file_qid(s: Session, point: AttachPoint) -> None:
    assert s.attach(Tattach(1, 7, NOFID, b"", b"", 0)).qid == point.root_qid
    assert point.root_qid.type == 0


def test_walk_from_the_file_root(s: Session, point: AttachPoint) -> None:
    rq = point.root_qid
    assert walk(s, 1) == []  # clone
    assert s.getattr(Tgetattr(1, 1, C.GETATTR_BASIC)).qid == rq
    assert walk(s, 2, b"..") == [rq]  # ".." stays at the root
    assert walk(s, 3, b"..", b"..", b"..") == [rq] * 3
    assert walk(s, 3, b"..", fid=3) == [rq]  # reusing its own fid number
    for names in ([b"x"], [b"secret"], [b"."], [b""], [b"a/b"], [b"hosts"]):
        err(errno.ENOTDIR, s.walk, Twalk(1, ROOT, 4, names))
    # after "..", a name: a partial walk (the root's qid), no new fid
    assert walk(s, 4, b"..", b"secret") == [rq]
    err(errno.EBADF, s.getattr, Tgetattr(1, 4, C.GETATTR_BASIC))
    # every fid reached is the file and works as the root does
    for fid in (1, 2, 3):
        lopen(s, fid)
        assert read(s, fid) == CONTENT
    assert s.fid_count() == 4


def test_clones_keep_working_after_the_original_is_clunked(s: Session) -> None:
    walk(s, 1)
    walk(s, 2, b"..", fid=1)
    clunk(s, ROOT)
    clunk(s, 1)
    lopen(s, 2, C.L_O_RDWR)
    assert write(s, 2, b"X") == 1


# ------------------------------------------------------------------- file ops


def test_getattr_and_statfs(s: Session, hosts: Path) -> None:
    r = s.getattr(Tgetattr(1, ROOT, C.GETATTR_ALL))
    st = hosts.stat()
    assert stat.S_ISREG(r.mode) and r.size == len(CONTENT) and r.qid.path == st.st_ino
    assert s.statfs(Tstatfs(1, ROOT)).type == 0x01021997


def test_lopen_read_write_fsync(s: Session, hosts: Path, by_handle: bool) -> None:
    walk(s, 1)
    lopen(s, 1)
    assert read(s, 1) == CONTENT
    assert read(s, 1, offset=10, count=5) == CONTENT[10:15]
    walk(s, 2)
    lopen(s, 2, C.L_O_RDWR)
    assert write(s, 2, b"::1 ip6\n", offset=len(CONTENT)) == 8
    s.fsync(Tfsync(1, 2, 0))
    s.fsync(Tfsync(1, 2, 1))
    assert hosts.read_bytes() == CONTENT + b"::1 ip6\n"
    walk(s, 3)
    lopen(s, 3, C.L_O_WRONLY | C.L_O_TRUNC)
    assert hosts.read_bytes() == b""
    # the attach fid itself can be opened, once
    lopen(s, ROOT)
    err(errno.EINVAL, s.lopen, Tlopen(1, ROOT, C.L_O_RDONLY))
    walk(s, 4)
    err(errno.ENOTDIR, s.lopen, Tlopen(1, 4, C.L_O_DIRECTORY))
    # the host file itself was written, never replaced
    assert hosts.stat().st_ino == s.point.root_ino


def test_setattr_size_mode_times(
    s: Session, hosts: Path, by_handle: bool, empty_path: bool
) -> None:
    _setattr(s, ROOT, C.SETATTR_SIZE, size=4)
    assert hosts.read_bytes() == CONTENT[:4]
    _setattr(s, ROOT, C.SETATTR_MODE, mode=stat.S_IFREG | 0o600)
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o600
    _setattr(s, ROOT, C.SETATTR_ATIME | C.SETATTR_ATIME_SET | C.SETATTR_MTIME | C.SETATTR_MTIME_SET,
             atime_sec=1000, atime_nsec=5, mtime_sec=2000, mtime_nsec=7)
    st = hosts.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 5, 2000 * 10**9 + 7)
    _setattr(s, ROOT, C.SETATTR_UID | C.SETATTR_GID, uid=os.geteuid(), gid=os.getegid())
    # a clone of the root, opened read-only: truncation re-opens for writing
    walk(s, 1)
    lopen(s, 1)
    _setattr(s, 1, C.SETATTR_SIZE, size=0)
    assert hosts.read_bytes() == b""


def test_xattrs(s: Session, hosts: Path, by_handle: bool) -> None:
    try:
        os.setxattr(hosts, "user.probe", b"1")
    except OSError as e:
        pytest.skip(f"no user xattrs here: {e}")
    walk(s, 1)
    s.xattrcreate(Txattrcreate(1, 1, b"user.tag", 3, 0))
    assert write(s, 1, b"abc") == 3
    clunk(s, 1)
    assert os.getxattr(hosts, "user.tag") == b"abc"
    assert s.xattrwalk(Txattrwalk(1, ROOT, 2, b"user.tag")).size == 3
    assert read(s, 2) == b"abc"
    assert s.xattrwalk(Txattrwalk(1, ROOT, 3, b"")).size > 0
    assert b"user.tag\0" in read(s, 3)
    err(errno.EOPNOTSUPP, s.xattrwalk, Txattrwalk(1, ROOT, 4, b"trusted.x"))


def test_locks(s: Session, hosts: Path, by_handle: bool) -> None:
    walk(s, 1)
    lopen(s, 1, C.L_O_RDWR)
    lk = Tlock(1, 1, C.LOCK_TYPE_WRLCK, 0, 0, 10, 1, b"a")
    assert s.lock(lk).status == C.LOCK_SUCCESS
    # a second owner of the same fid gets a description of its own (a re-open)
    other = Tlock(1, 1, C.LOCK_TYPE_WRLCK, 0, 0, 10, 2, b"b")
    assert s.lock(other).status == C.LOCK_BLOCKED
    g = s.getlock(Tgetlock(1, 1, C.LOCK_TYPE_WRLCK, 0, 10, 2, b"b"))
    assert g.type == C.LOCK_TYPE_WRLCK
    # a host process sees the lock
    with open(hosts, "r+b") as f:
        with pytest.raises(OSError):
            fcntl.fcntl(f, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 10, 0))


def test_nothing_is_a_directory(s: Session, hosts: Path) -> None:
    before = sorted(os.listdir(hosts.parent))
    err(errno.ENOTDIR, s.readdir, Treaddir(1, ROOT, 0, 4096))
    lopen(s, ROOT)
    err(errno.ENOTDIR, s.readdir, Treaddir(1, ROOT, 0, 4096))
    walk(s, 1)
    err(errno.ENOTDIR, s.lcreate, Tlcreate(1, 1, b"new", C.L_O_RDWR, 0o644, 0))
    err(errno.ENOTDIR, s.mkdir, Tmkdir(1, 1, b"new", 0o755, 0))
    err(errno.ENOTDIR, s.mknod, Tmknod(1, 1, b"new", stat.S_IFREG | 0o644, 0, 0, 0))
    err(errno.ENOTDIR, s.symlink, Tsymlink(1, 1, b"new", b"/etc/shadow", 0))
    err(errno.ENOTDIR, s.unlinkat, Tunlinkat(1, 1, b"secret", 0))
    err(errno.ENOTDIR, s.unlinkat, Tunlinkat(1, 1, b"hosts", 0))
    err(errno.ENOTDIR, s.renameat, Trenameat(1, 1, b"secret", 1, b"x"))
    err(errno.EINVAL, s.readlink, Treadlink(1, 1))
    assert sorted(os.listdir(hosts.parent)) == before


def test_root_cannot_be_removed_renamed_or_linked(s: Session, hosts: Path) -> None:
    ino = hosts.stat().st_ino
    for fid in (1, 2, 3):
        walk(s, fid)
    err(errno.EBUSY, s.rename, Trename(1, 1, 2, b"moved"))
    err(errno.EBUSY, s.link, Tlink(1, 2, 1, b"linked"))
    err(errno.EBUSY, s.remove, Tremove(1, 1))
    err(errno.EBADF, s.getattr, Tgetattr(1, 1, C.GETATTR_BASIC))  # Tremove clunks anyway
    err(errno.EBUSY, s.remove, Tremove(1, ROOT))
    assert hosts.read_bytes() == CONTENT and hosts.stat().st_ino == ino
    assert sorted(os.listdir(hosts.parent)) == ["hosts", "secret"]
    lopen(s, 3)
    assert read(s, 3) == CONTENT


# ---------------------------------------------------------------- read-only


def _write_requests() -> list[Message]:
    """A request of every mutating type on fid 1, a clone of the root."""
    sa = Tsetattr(1, 1, C.SETATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0)
    return [
        sa,
        Tsetattr(1, 1, C.SETATTR_MODE, 0o777, 0, 0, 0, 0, 0, 0, 0),
        Tsetattr(1, 1, C.SETATTR_MTIME, 0, 0, 0, 0, 0, 0, 0, 0),
        Twrite(1, 1, 0, b"x"),
        Tlopen(1, 1, C.L_O_WRONLY),
        Tlopen(1, 1, C.L_O_RDONLY | C.L_O_TRUNC),
        Txattrcreate(1, 1, b"user.x", 1, 0),
        Tremove(1, 1),
        Trename(1, 1, 1, b"x"),
        Trenameat(1, 1, b"a", 1, b"b"),
        Tunlinkat(1, 1, b"a", 0),
        Tlink(1, 1, 1, b"x"),
        Tlcreate(1, 1, b"x", C.L_O_RDWR, 0o644, 0),
        Tmkdir(1, 1, b"x", 0o755, 0),
        Tmknod(1, 1, b"x", stat.S_IFREG | 0o644, 0, 0, 0),
        Tsymlink(1, 1, b"x", b"y", 0),
    ]


# The read-only policy is the connection core's (gofer9p.connection), so these
# tests send their requests through a core over a Session of the point.


def _open_clone(peer: Peer) -> None:
    assert isinstance(peer.call(Twalk(1, ROOT, 1, [])), Rwalk)
    assert isinstance(peer.call(Tlopen(1, 1, C.L_O_RDONLY)), Rlopen)


def _read_clone(peer: Peer) -> bytes:
    r = peer.call(Tread(1, 1, 0, 4096))
    assert isinstance(r, Rread), r
    return bytes(r.data)


def test_read_only_file_root(hosts: Path) -> None:
    p = AttachPoint.open(str(hosts), readonly=True)
    peer = serving(p, ROOT)
    try:
        before = hosts.stat()
        for m in _write_requests():
            assert isinstance(peer.call(Twalk(1, ROOT, 1, [])), Rwalk)
            refused(peer, errno.EROFS, m)
            if not isinstance(m, Tremove):
                assert isinstance(peer.call(Tclunk(1, 1)), Rclunk)
        after = hosts.stat()
        assert hosts.read_bytes() == CONTENT
        assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
        _open_clone(peer)
        assert _read_clone(peer) == CONTENT
        refused(peer, errno.EROFS, Twrite(1, 1, 0, b"x"))
    finally:
        peer.core.session.reset()
        p.close()


def test_panic_on_write_file_root(hosts: Path) -> None:
    p = AttachPoint.open(str(hosts), readonly=True, panic_on_write=True)
    reasons = fake_panic(p)
    peer = serving(p, ROOT)
    try:
        _open_clone(peer)
        assert _read_clone(peer) == CONTENT  # reading never panics
        for m in _write_requests():
            if isinstance(m, Tremove):
                continue
            with pytest.raises(Panicked):
                peer.feed(encode(m))
        assert len(reasons) == len(_write_requests()) - 1
        assert all(repr(str(hosts)) in r for r in reasons)
        assert hosts.read_bytes() == CONTENT
    finally:
        peer.core.session.reset()
        p.close()


# ------------------------------------------------- host swaps of the root's entry


def _swap_for_symlink(hosts: Path, target: Path) -> Path:
    """Move the served file aside on the host and put a symlink to ``target`` in its place."""
    aside = hosts.parent / "hosts.aside"
    os.rename(hosts, aside)
    hosts.symlink_to(target)
    return aside


def test_symlink_swap_does_not_redirect(
    s: Session, host: Path, hosts: Path, empty_path: bool
) -> None:
    """The host replaces the root's entry with a symlink to a secret: re-opens by name
    (no file handles) and by-name time changes answer ESTALE and touch nothing."""
    _reopen._handles_ok["reopen"] = False  # restored below: the by-name path is the one at risk
    try:
        secret = host / "secret"
        before = secret.stat()
        walk(s, 1)
        lopen(s, 1, C.L_O_RDWR)  # opened before the swap: keeps its file
        aside = _swap_for_symlink(hosts, secret)
        for flags in (C.L_O_RDONLY, C.L_O_RDWR, C.L_O_WRONLY | C.L_O_TRUNC):
            walk(s, 2)
            err(errno.ESTALE, s.lopen, Tlopen(1, 2, flags))
            clunk(s, 2)
        err(errno.ESTALE, _setattr, s, ROOT, C.SETATTR_SIZE, size=0)
        if not empty_path:
            err(errno.ESTALE, _setattr, s, ROOT, C.SETATTR_MODE, mode=0o777)
            err(errno.ESTALE, _setattr, s, ROOT, C.SETATTR_MTIME | C.SETATTR_MTIME_SET,
                mtime_sec=5)
        else:
            # on the fid's own fd: the root's inode, wherever it now is
            _setattr(s, ROOT, C.SETATTR_MODE, mode=0o640)
            assert stat.S_IMODE(aside.stat().st_mode) == 0o640
        err(errno.ESTALE, s.xattrwalk, Txattrwalk(1, ROOT, 3, b""))
        # the open fid still writes the real file, never the secret
        assert write(s, 1, b"X") == 1
        after = secret.stat()
        assert secret.read_text() == "host secret\n"
        assert (after.st_mode, after.st_mtime_ns, after.st_size) == (
            before.st_mode, before.st_mtime_ns, before.st_size)
        assert aside.read_bytes()[:1] == b"X"
        # the entry is put back: the root works again
        hosts.unlink()
        os.rename(aside, hosts)
        walk(s, 2)
        lopen(s, 2)
        assert read(s, 2)[:1] == b"X"
    finally:
        _reopen._handles_ok["reopen"] = True


def test_other_file_swapped_in_is_stale(s: Session, host: Path, hosts: Path) -> None:
    """Another regular file renamed over the root's name on the host: ESTALE, not that file."""
    _reopen._handles_ok["reopen"] = False
    try:
        other = host / "other"
        other.write_text("other file\n")
        aside = host / "hosts.aside"
        os.link(hosts, aside)  # keep the root's inode alive elsewhere
        os.rename(other, hosts)
        walk(s, 1)
        err(errno.ESTALE, s.lopen, Tlopen(1, 1, C.L_O_WRONLY))
        err(errno.ESTALE, _setattr, s, ROOT, C.SETATTR_SIZE, size=0)
        assert hosts.read_text() == "other file\n"
        assert aside.read_bytes() == CONTENT
    finally:
        _reopen._handles_ok["reopen"] = True


def test_parent_moved_on_host_still_finds_the_file(s: Session, tmp_path: Path, host: Path) -> None:
    """The root's directory fd follows a rename of the directory on the host (it is the
    directory, not a path), so re-opens keep reaching the same file by name."""
    _reopen._handles_ok["reopen"] = False
    try:
        os.rename(host, tmp_path / "moved")
        walk(s, 1)
        lopen(s, 1, C.L_O_RDWR)
        assert write(s, 1, b"Y") == 1
        assert (tmp_path / "moved" / "hosts").read_bytes()[:1] == b"Y"
    finally:
        _reopen._handles_ok["reopen"] = True


def test_fds_are_released(hosts: Path) -> None:
    p = AttachPoint.open(str(hosts))
    s = Session(p)
    s.attach(Tattach(1, 9, NOFID, b"", b"", 0))
    lopen(s, 9)  # the point caches one fd per mount for handles: warm it up
    s.reset()
    base = fd_count()
    s.attach(Tattach(1, ROOT, NOFID, b"", b"", 0))
    walk(s, 1)
    walk(s, 2, b"..")
    lopen(s, 2, C.L_O_RDWR)
    err(errno.EBUSY, s.remove, Tremove(1, 1))
    s.reset()
    assert fd_count() == base
    p.close()
